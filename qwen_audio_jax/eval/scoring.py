"""Scores predictions against a manifest, per source and overall, with the official scripts' rules per task.

Which rule comes from where (the scripts are QwenLM/Qwen2-Audio and QwenLM/Qwen-Audio ``eval_audio/*.py``):

====================  ===============================================================================================
asr                   evaluate_asr.py: remove_sp, per-language normaliser (v2) or none (v1), EvaluationTokenizer,
                      characters for zh (and yue in v2); corpus WER per source (``normalize.asr_tokens``).
s2tt                  evaluate_st.py: raw text, ``sacrebleu.corpus_bleu(hyps, [refs], tokenize=ja-mecab|zh|13a)``.
ser / vsc             evaluate_emotion.py / evaluate_vocal_sound.py: exact match; v2 compares ``response.lstrip()``.
aqa                   Qwen-Audio evaluate_aqa.py: exact match, plus the yes/no subset for sources named clotho*.
caption               Qwen-Audio evaluate_caption.py: COCO metrics (``caption.caption_scores``).
====================  ===============================================================================================

Qwen-Audio (v1) scripts decode with ``tokenizer.decode(...).strip()`` before scoring, so the v1 variant strips
predictions; Qwen2-Audio's decode does not strip, so v2 uses the text as generated (and ``lstrip`` for ser/vsc).
Qwen2-Audio has no official AQA or caption scorer: both variants use the Qwen-Audio rules for those.
A missing prediction (absent, or None because generation failed) is listed in ``missing`` and scored as an empty
hypothesis (WER, BLEU, caption) or as wrong (accuracy); it is never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwen_audio_jax.choices import QWEN2_AUDIO, QWEN_AUDIO_V1
from qwen_audio_jax.errors import DataError
from qwen_audio_jax.eval import caption as caption_mod
from qwen_audio_jax.eval.manifest import ManifestEntry, ManifestProblem, check_task
from qwen_audio_jax.eval.metrics import (
    accuracy,
    bleu_tokenize,
    bleu_tokenizer,
    corpus_bleu,
    corpus_wer,
    edit_counts,
)
from qwen_audio_jax.eval.normalize import (
    asr_normalizer_name,
    asr_tokens,
    check_variant,
    is_char_level,
)

__all__ = ["METRIC_OF_TASK", "EvalResult", "score_predictions"]

METRIC_OF_TASK = {
    "asr": "wer",
    "s2tt": "bleu",
    "ser": "accuracy",
    "vsc": "accuracy",
    "aqa": "accuracy",
    "caption": "CIDEr",
}


@dataclass
class EvalResult:
    """Scores of one task. ``overall`` and each ``sources[name]`` are {"count": n, metric: value, ...};
    ``examples`` are per-example dicts for errors.jsonl; ``problems`` / ``prediction_problems`` are the bad lines
    of the manifest / predictions file; ``normalizer`` says how texts were normalised before scoring."""

    task: str
    variant: str
    overall: dict[str, Any]
    sources: dict[str, dict[str, Any]]
    examples: list[dict[str, Any]]
    missing: list[str]
    problems: list[ManifestProblem] = field(default_factory=list)
    prediction_problems: list[ManifestProblem] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)
    normalizer: Any = None
    not_computed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The metrics.json object."""
        return {
            "task": self.task,
            "variant": self.variant,
            "normalizer": self.normalizer,
            "overall": self.overall,
            "sources": self.sources,
            "missing": {"count": len(self.missing), "ids": list(self.missing)},
            "unmatched_predictions": {
                "count": len(self.unmatched_predictions),
                "ids": list(self.unmatched_predictions),
            },
            "problems": {
                "manifest": _problems_json(self.problems),
                "predictions": _problems_json(self.prediction_problems),
            },
            "not_computed": list(self.not_computed),
            "notes": list(self.notes),
        }


def _problems_json(problems: Sequence[ManifestProblem]) -> dict[str, Any]:
    return {"count": len(problems), "lines": [p.to_json() for p in problems]}


def _by_source(entries: Sequence[ManifestEntry]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(e.source, []).append(i)
    return groups


def _hypothesis(pred: str | None, task: str, variant: str) -> str:
    if pred is None:
        return ""
    if variant == QWEN_AUDIO_V1 or task in ("aqa", "caption"):
        return pred.strip()  # Qwen-Audio scripts: tokenizer.decode(...).strip()
    if task in ("ser", "vsc"):
        return pred.lstrip()  # Qwen2-Audio evaluate_emotion.py / evaluate_vocal_sound.py: response.lstrip()
    return pred  # Qwen2-Audio asr (remove_sp does the clean-up) and s2tt: the decoded text as is


def _score_asr(entries, hyps, groups, variant, result: EvalResult) -> None:
    counts = []
    for i, (e, hyp) in enumerate(zip(entries, hyps)):
        ref_items = asr_tokens(e.reference, e.language, variant)
        hyp_items = asr_tokens(hyp, e.language, variant)
        c = edit_counts(ref_items, hyp_items)
        counts.append(c)
        sep = "" if is_char_level(e.language, variant) else " "
        result.examples[i].update(
            normalized_reference=sep.join(ref_items),
            normalized_prediction=sep.join(hyp_items),
            ref_len=c.ref_len,
            substitutions=c.substitutions,
            insertions=c.insertions,
            deletions=c.deletions,
            errors=c.errors,
        )
    for name, idx in groups.items():
        result.sources[name]["wer"] = corpus_wer([counts[i] for i in idx])
    result.overall["wer"] = corpus_wer(counts)
    languages = sorted({e.language for e in entries})
    result.normalizer = {lang: asr_normalizer_name(lang, variant) for lang in languages}
    for lang in languages:  # the scripts only know en / zh / yue; "zh-CN" would silently get the basic normaliser
        base = lang.lower().replace("_", "-").split("-")[0]
        if lang not in ("en", "zh", "yue") and base in ("en", "zh", "yue", "cmn"):
            result.notes.append(
                f"language {lang!r} is scored like any other language (basic normaliser, words); "
                "write 'en', 'zh' (Mandarin) or 'yue' (Cantonese) to get their official rules."
            )
    if len({is_char_level(lang, variant) for lang in languages}) > 1:
        result.notes.append("overall wer pools word-level and character-level sources; read the per-source figures.")
    for name in groups:
        if result.sources[name]["wer"] is None:
            result.notes.append(f"source {name!r}: the references have no token after normalisation, wer is null.")


def _score_s2tt(entries, hyps, groups, result: EvalResult) -> None:
    tokenizers = {}
    for name, idx in groups.items():
        toks = {bleu_tokenizer(entries[i].target_language) for i in idx}
        if len(toks) > 1:
            result.sources[name]["bleu"] = None
            result.notes.append(
                f"source {name!r} mixes target languages needing tokenizers {sorted(toks)}; "
                "give each target language its own source to get a bleu."
            )
            continue
        (tok,) = toks
        tokenizers[name] = tok
        result.sources[name]["bleu"] = corpus_bleu([hyps[i] for i in idx], [entries[i].reference for i in idx], tok)
    for idx in groups.values():
        for i in idx:
            tok = bleu_tokenizer(entries[i].target_language)
            result.examples[i].update(
                bleu_tokenizer=tok,
                normalized_reference=bleu_tokenize(entries[i].reference, tok),
                normalized_prediction=bleu_tokenize(hyps[i], tok),
            )
    used = {bleu_tokenizer(e.target_language) for e in entries}
    if len(used) == 1 and len(tokenizers) == len(groups):
        result.overall["bleu"] = corpus_bleu(hyps, [e.reference for e in entries], next(iter(used)))
    else:
        result.overall["bleu"] = None
        result.notes.append(
            f"overall bleu not computed: the sources need different sacrebleu tokenizers "
            f"({', '.join(sorted(used))}); read the per-source figures."
        )
    result.normalizer = {name: f"none; sacrebleu tokenize={tok}" for name, tok in tokenizers.items()}


def _score_accuracy(task, entries, hyps, groups, variant, result: EvalResult) -> None:
    for i, (e, hyp) in enumerate(zip(entries, hyps)):
        result.examples[i].update(
            normalized_reference=e.reference, normalized_prediction=hyp, correct=hyp == e.reference
        )
    for name, idx in groups.items():
        result.sources[name]["accuracy"] = accuracy([entries[i].reference for i in idx], [hyps[i] for i in idx])
    result.overall["accuracy"] = accuracy([e.reference for e in entries], hyps)
    if task == "aqa":
        # evaluate_aqa.py: for sources starting with "clotho", also the accuracy on items whose answer is yes/no
        # (the subset is chosen case-insensitively, the comparison stays exact).
        pooled = []
        for name, idx in groups.items():
            sub = [i for i in idx if entries[i].reference.lower() in ("yes", "no")]
            if name.startswith("clotho") and sub:
                result.sources[name]["yes_no_count"] = len(sub)
                result.sources[name]["yes_no_accuracy"] = accuracy(
                    [entries[i].reference for i in sub], [hyps[i] for i in sub]
                )
                pooled += sub
        if pooled:
            result.overall["yes_no_count"] = len(pooled)
            result.overall["yes_no_accuracy"] = accuracy(
                [entries[i].reference for i in pooled], [hyps[i] for i in pooled]
            )
    strip = "strip()" if (variant == QWEN_AUDIO_V1 or task == "aqa") else "lstrip()"
    result.normalizer = f"prediction.{strip}, exact match against the reference"


def _score_caption(entries, hyps, groups, tokenizer, result: EvalResult) -> None:
    backends = set()
    for name, idx in groups.items():
        scores, tok_refs, tok_hyps, backend = caption_mod.caption_scores(
            [entries[i].reference for i in idx], [hyps[i] for i in idx], tokenizer=tokenizer
        )
        backends.add(backend)
        result.sources[name].update(scores)
        for i, refs, hyp in zip(idx, tok_refs, tok_hyps):
            result.examples[i].update(normalized_reference=refs, normalized_prediction=hyp)
    scores, _, _, backend = caption_mod.caption_scores([e.reference for e in entries], hyps, tokenizer=tokenizer)
    backends.add(backend)
    result.overall.update(scores)
    result.not_computed = list(caption_mod.NOT_COMPUTED)
    result.normalizer = f"PTB tokenizer ({'/'.join(sorted(backends))}), lower case, punctuation tokens removed"
    if "python" in backends:
        result.notes.append(
            "captions were tokenised by the Python approximation of Stanford PTBTokenizer (no java "
            "on PATH); scores can differ slightly from the official Java tokenisation."
        )
    result.notes.append("METEOR, SPICE and SPIDEr need the Java METEOR/SPICE tools and Stanford models; not computed.")


def score_predictions(
    task: str,
    entries: Sequence[ManifestEntry],
    predictions: Mapping[str, str | None],
    *,
    variant: str = QWEN2_AUDIO,
    problems: Sequence[ManifestProblem] = (),
    caption_tokenizer: str = "auto",
) -> EvalResult:
    """Scores ``predictions`` (id -> text, None for a failed generation) against ``entries`` for ``task``.

    ``variant`` picks the rules: "qwen2_audio" (Qwen2-Audio's scripts) or "qwen_audio_v1" (Qwen-Audio's).
    ``problems`` (the manifest's bad lines) are carried into the result; a predictions mapping read by
    ``read_predictions`` carries its own bad lines in ``.problems``, which land in ``prediction_problems``.
    """
    check_task(task)
    check_variant(variant)
    entries = list(entries)
    if not entries:
        raise DataError("Nothing to score: the manifest has no entries; check the manifest file.")
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"Manifest id {dup!r} appears more than once; ids must be unique.")
    for e in entries:
        if (task == "caption") != isinstance(e.reference, tuple) or (task == "s2tt" and not e.target_language):
            raise DataError(f"Manifest entry {e.id!r} does not fit task {task!r}; read the manifest with that task.")
    known = set(ids)
    result = EvalResult(
        task=task,
        variant=variant,
        overall={"count": len(entries)},
        sources={},
        examples=[],
        missing=[e.id for e in entries if predictions.get(e.id) is None],
        problems=list(problems),
        prediction_problems=list(getattr(predictions, "problems", ())),
        unmatched_predictions=[rid for rid in predictions if rid not in known],
    )
    groups = _by_source(entries)
    for name, idx in groups.items():
        result.sources[name] = {"count": len(idx)}
    hyps = [_hypothesis(predictions.get(e.id), task, variant) for e in entries]
    missing = set(result.missing)
    for e in entries:
        ref = list(e.reference) if isinstance(e.reference, tuple) else e.reference
        result.examples.append(
            {
                "id": e.id,
                "source": e.source,
                "language": e.language,
                "reference": ref,
                "prediction": predictions.get(e.id),
                "missing": e.id in missing,
            }
        )
    if task == "asr":
        _score_asr(entries, hyps, groups, variant, result)
    elif task == "s2tt":
        _score_s2tt(entries, hyps, groups, result)
    elif task == "caption":
        _score_caption(entries, hyps, groups, caption_tokenizer, result)
    else:
        _score_accuracy(task, entries, hyps, groups, variant, result)
    if result.missing:
        result.notes.append(f"{len(result.missing)} example(s) had no prediction and were scored as empty/wrong.")
    return result
