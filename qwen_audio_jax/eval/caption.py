"""Audio-caption metrics (Clotho) as far as they can be computed faithfully without the full Java toolchain.

The official scorer, QwenLM/Qwen-Audio ``eval_audio/evaluate_caption.py`` ``compute_caption`` (with
``eval_audio/metrics.py`` ``CocoTokenizer``), runs the audio-captioning "caption-evaluation-tools" copy of the COCO
caption toolkit: Stanford PTBTokenizer (Java) over references and predictions, then BLEU-1..4, METEOR (Java),
ROUGE-L, CIDEr (the toolkit's CIDEr-D implementation) and SPICE (Java plus Stanford models), and SPIDEr =
(CIDEr + SPICE) / 2.

Here BLEU, ROUGE-L and CIDEr use ``pycocoevalcap``'s pure-Python scorers (the same code as that toolkit). The
tokenizer is the real Stanford PTBTokenizer jar shipped in ``pycocoevalcap`` when ``java`` is on PATH (the official
path), otherwise ``python_ptb_tokenize``, an approximation of it; the result says which. METEOR, SPICE and SPIDEr are
not computed (``NOT_COMPUTED``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

from qwen_audio_jax.errors import ConfigError

__all__ = ["CAPTION_METRICS", "NOT_COMPUTED", "caption_scores", "ptb_tokenize", "python_ptb_tokenize"]

NOT_COMPUTED = ("METEOR", "SPICE", "SPIDEr")
CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
TOKENIZERS = ("auto", "java", "python")

# pycocoevalcap/tokenizer/ptbtokenizer.py: tokens dropped after PTB tokenisation. With -lowerCase the bracket tokens
# come out as "-lrb-" etc., which this list (upper case) does not catch, so they stay; the approximation keeps that.
_PUNCTUATIONS = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_NT = re.compile(r"(\w)n't\b")
_CLITIC = re.compile(r"(\w)'(s|re|ve|ll|d|m)\b")
_TOKEN = re.compile(r"\.\.\.|--|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.'/]\w+)*|\S")


def python_ptb_tokenize(caption: str) -> str:
    """Approximates ``PTBTokenizer -preserveLines -lowerCase`` plus the punctuation filter: lower case, n't and
    's/'re/'ve/'ll/'d/'m split off, punctuation separated (hyphenated words kept whole), brackets as -lrb- ...
    Differs from Java on rarer constructions (abbreviations, some quotes, Unicode dashes)."""
    text = caption.replace("\n", " ").lower()
    text = _CLITIC.sub(r"\1 '\2", _NT.sub(r"\1 n't", text))
    tokens = [_BRACKETS.get(t, t) for t in _TOKEN.findall(text) if t != '"']  # " becomes `` or '': dropped
    return " ".join(t for t in tokens if t not in _PUNCTUATIONS)


def _java_ptb_tokenize(captions: list[str]) -> list[str]:
    # Same command and post-filter as pycocoevalcap's PTBTokenizer.tokenize, but the input file goes to a private
    # temporary directory instead of the (possibly read-only) site-packages folder.
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar = os.path.join(os.path.dirname(ptb.__file__), ptb.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "captions.txt")
        with open(src, "w", encoding="utf-8") as f:
            f.write("\n".join(c.replace("\n", " ").replace("\r", " ") for c in captions))
        cmd = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", src]
        out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8")
    lines = out.split("\n")[: len(captions)]
    if len(lines) != len(captions):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(captions)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in _PUNCTUATIONS) for line in lines]


def ptb_tokenize(captions: Sequence[str], tokenizer: str = "auto") -> tuple[list[str], str]:
    """Tokenises captions the COCO way; returns (tokenised captions, the backend used: "java" or "python")."""
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"Unknown caption tokenizer {tokenizer!r}; use one of {', '.join(TOKENIZERS)}.")
    captions = list(captions)
    if tokenizer in ("auto", "java") and shutil.which("java"):
        try:
            return _java_ptb_tokenize(captions), "java"
        except (OSError, subprocess.CalledProcessError, RuntimeError):
            if tokenizer == "java":
                raise
    elif tokenizer == "java":
        raise ConfigError("The caption tokenizer 'java' needs a java executable on PATH; install a JRE or use 'auto'.")
    return [python_ptb_tokenize(c) for c in captions], "python"


def caption_scores(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], *, tokenizer: str = "auto"
) -> tuple[dict[str, float], list[list[str]], list[str], str]:
    """COCO caption metrics for one corpus (CIDEr's document frequencies are corpus-level, like the official call per
    source). Returns (scores by official name, tokenised references, tokenised hypotheses, tokenizer backend)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError("caption_scores needs one non-empty reference list per hypothesis, and at least one")
    flat = [r for refs in references for r in refs]
    tokenized, backend = ptb_tokenize(flat + list(hypotheses), tokenizer)
    tok_refs, pos = [], 0
    for refs in references:
        tok_refs.append(tokenized[pos : pos + len(refs)])
        pos += len(refs)
    tok_hyps = tokenized[pos:]
    gts = {i: refs for i, refs in enumerate(tok_refs)}
    res = {i: [hyp] for i, hyp in enumerate(tok_hyps)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = dict(zip(CAPTION_METRICS, [*map(float, bleu), float(rouge), float(cider)]))
    return scores, tok_refs, tok_hyps, backend
