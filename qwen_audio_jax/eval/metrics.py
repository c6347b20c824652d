"""Corpus metrics as the official scripts compute them: WER (with S/I/D per example), sacreBLEU, accuracy.

* WER: ``compute_wer`` in QwenLM/Qwen2-Audio and QwenLM/Qwen-Audio ``eval_audio/evaluate_asr.py``:
  ``sum(editdistance.eval(ref_items, pred_items)) / sum(len(ref_items))`` over a source (corpus level, not a mean
  of sentence WERs). The distance comes from ``editdistance`` as in the scripts; the substitution / insertion /
  deletion split (which the scripts do not report) from ``jiwer``'s alignment, checked to add up to the same distance.
* BLEU: ``evaluate_st.py`` of both repositories: ``sacrebleu.corpus_bleu(hyps, [refs], tokenize=...).score``.
* Accuracy: ``evaluate_emotion.py`` / ``evaluate_vocal_sound.py`` / ``evaluate_aqa.py``: sklearn's
  ``accuracy_score(refs, hyps)``, i.e. the fraction of exact string matches (computed here without sklearn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

__all__ = [
    "EditCounts",
    "accuracy",
    "bleu_tokenize",
    "bleu_tokenizer",
    "corpus_bleu",
    "corpus_wer",
    "edit_counts",
]


@dataclass(frozen=True)
class EditCounts:
    """Levenshtein alignment of one example: reference length and the minimal substitutions/insertions/deletions."""

    ref_len: int
    substitutions: int
    insertions: int
    deletions: int

    @property
    def errors(self) -> int:
        """The edit distance (what compute_wer adds up)."""
        return self.substitutions + self.insertions + self.deletions


def edit_counts(ref_items: Sequence[str], hyp_items: Sequence[str]) -> EditCounts:
    """Aligns two token lists (words, or characters for zh/yue). Tokens must not contain whitespace (they never do:
    they come from ``str.split()`` or from splitting such words into characters)."""
    import editdistance
    import jiwer

    ref_items, hyp_items = list(ref_items), list(hyp_items)
    distance = editdistance.eval(ref_items, hyp_items)
    if not ref_items and not hyp_items:
        return EditCounts(0, 0, 0, 0)
    if not ref_items:
        counts = EditCounts(0, 0, len(hyp_items), 0)
    elif not hyp_items:
        counts = EditCounts(len(ref_items), 0, 0, len(ref_items))
    else:
        out = jiwer.process_words(" ".join(ref_items), " ".join(hyp_items))
        counts = EditCounts(len(ref_items), out.substitutions, out.insertions, out.deletions)
    if counts.errors != distance:  # both are minimal Levenshtein alignments with unit costs; never expected
        raise RuntimeError(f"jiwer alignment ({counts}) disagrees with editdistance ({distance}) for {ref_items!r}")
    return counts


def corpus_wer(counts: Sequence[EditCounts]) -> float | None:
    """sum(errors) / sum(reference length); None when the references have no token at all (the official script
    would divide by zero)."""
    ref_len = sum(c.ref_len for c in counts)
    return sum(c.errors for c in counts) / ref_len if ref_len else None


def bleu_tokenizer(target_language: str) -> str:
    """evaluate_st.py's choice, keyed on the target language: 'ja-mecab' for Japanese, 'zh' for Chinese, '13a'
    otherwise. (The script reads the language from the source name, ``source.split("_")[-2]``; a manifest states it
    in ``target_language``. Region suffixes such as CoVoST2's 'zh-CN' are accepted.)"""
    base = target_language.strip().lower().replace("_", "-").split("-")[0]
    return {"ja": "ja-mecab", "zh": "zh"}.get(base, "13a")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str) -> float:
    """sacreBLEU corpus BLEU (0-100) with one reference per segment and the library defaults (exp smoothing)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


@cache
def _bleu_metric(tokenize: str):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize)  # building a ja-mecab tokenizer loads MeCab: do it once


def bleu_tokenize(text: str, tokenize: str) -> str:
    """The text as sacreBLEU tokenises it for BLEU (for errors.jsonl; scoring uses corpus_bleu)."""
    return _bleu_metric(tokenize).tokenizer(text)


def accuracy(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    """Fraction of exact matches (sklearn ``accuracy_score`` on label strings); None for no examples."""
    if len(references) != len(hypotheses):
        raise ValueError("accuracy needs as many hypotheses as references")
    if not references:
        return None
    return sum(r == h for r, h in zip(references, hypotheses)) / len(references)
