"""Text clean-up before scoring, exactly as the official evaluation scripts do it.

* ``remove_sp``: QwenLM/Qwen2-Audio and QwenLM/Qwen-Audio ``eval_audio/evaluate_asr.py`` (identical in both).
* ``evaluation_tokenize``: fairseq ``fairseq/scoring/tokenizer.py`` ``EvaluationTokenizer`` (MIT), which both
  ``evaluate_asr.py`` scripts import as ``evaluate_tokenizer.EvaluationTokenizer`` with ``tokenizer_type="none"``
  (sacreBLEU's "none" tokenizer returns its input unchanged, so only the three post-steps remain).
* ``asr_tokens``: the per-language branch of ``compute_wer`` in each ``evaluate_asr.py``.
* The English and basic normalisers are OpenAI Whisper's (``whisper/normalizers``), taken from the PyPI package
  ``whisper-normalizer`` 0.1.1, whose rules are identical to OpenAI's (later releases added kinda/sorta/dunno/cause
  rewrites that Whisper never had); the Chinese one is ``zh_normalizer.TextNorm`` (SpeechIO ``cn_tn.py``).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

from qwen_audio_jax.choices import QWEN2_AUDIO, QWEN_AUDIO_V1, VARIANTS
from qwen_audio_jax.errors import ConfigError

__all__ = [
    "VARIANTS",
    "asr_normalizer_name",
    "asr_tokens",
    "check_variant",
    "evaluation_tokenize",
    "is_char_level",
    "remove_sp",
]

# evaluate_asr.py: PUNCS = '!,.?;:' -- a space before one of these is removed
_PUNCS = "!,.?;:"
_TAG = re.compile(r"<\|.*?\|>")
_SPACE_BEFORE_PUNC = re.compile(f" ?([{_PUNCS}])")
_SPACES = re.compile(r"\s+")


def remove_sp(text: str, language: str) -> str:
    """evaluate_asr.py ``remove_sp``: every ``<|...|>`` tag -> space, runs of whitespace -> one space, the space
    before ``!,.?;:`` dropped, leading spaces stripped; for ``zh`` (only: not ``yue``) every whitespace removed."""
    text = _TAG.sub(" ", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNC.sub(r"\1", text)
    text = text.lstrip(" ")
    if language == "zh":
        text = _SPACES.sub("", text)
    return text


def evaluation_tokenize(sent: str, *, lowercase: bool = True, punctuation_removal: bool = True) -> str:
    """fairseq ``EvaluationTokenizer(tokenizer_type="none", ...).tokenize``.

    Punctuation removal splits on the ASCII space only (``sent.split(" ")``) and drops every piece whose characters
    are all of Unicode category P* (an empty piece counts, so runs of spaces collapse too); lowercasing comes after.
    """
    if punctuation_removal:
        sent = " ".join(t for t in sent.split(" ") if not all(unicodedata.category(c)[0] == "P" for c in t))
    if lowercase:
        sent = sent.lower()
    return sent


@cache
def _english():
    from whisper_normalizer.english import (
        EnglishTextNormalizer,  # loads the spelling table once
    )

    return EnglishTextNormalizer()


@cache
def _basic():
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


@cache
def _chinese():
    from qwen_audio_jax.eval.zh_normalizer import TextNorm

    return TextNorm()


def _zh_cn(text: str) -> str:
    import zhconv

    return zhconv.convert(text, "zh-cn")


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"Unknown evaluation variant {variant!r}; use one of {', '.join(VARIANTS)}.")


def is_char_level(language: str, variant: str = QWEN2_AUDIO) -> bool:
    """Scored per character: zh and yue in Qwen2-Audio's compute_wer, only zh in Qwen-Audio's."""
    return language in (("zh", "yue") if variant == QWEN2_AUDIO else ("zh",))


def asr_normalizer_name(language: str, variant: str = QWEN2_AUDIO) -> str:
    """A short description of the normalisation chain used for ``language`` (written to metrics.json)."""
    check_variant(variant)
    if variant == QWEN_AUDIO_V1:
        chain = "remove_sp -> EvaluationTokenizer(none, lowercase)"
    else:
        steps = {
            "en": "whisper EnglishTextNormalizer -> whisper BasicTextNormalizer",
            "zh": "cn_tn TextNorm (all options off)",
            "yue": "zhconv zh-cn -> whisper BasicTextNormalizer",
        }.get(language, "whisper BasicTextNormalizer")
        chain = f"remove_sp -> {steps} -> EvaluationTokenizer(none, lowercase, punctuation_removal)"
    return chain + (" -> characters" if is_char_level(language, variant) else " -> words")


def _qwen2_audio_normalize(text: str, language: str) -> str:
    # Qwen2-Audio evaluate_asr.py compute_wer, branch for branch. The zh test is an if/else that follows the en
    # test, so en text gets the English normaliser *and then* the basic one; yue is converted to simplified
    # Chinese and then also goes through the basic one; zh gets only cn_tn.
    if language == "yue":
        text = _zh_cn(text)
    if language == "en":
        text = _english()(text)
    if language == "zh":
        return _chinese()(text)
    return _basic()(text)


def asr_tokens(text: str, language: str, variant: str = QWEN2_AUDIO) -> list[str]:
    """The tokens ``compute_wer`` compares for one reference or hypothesis (after ``remove_sp``).

    qwen2_audio: per-language normaliser, then EvaluationTokenizer(lowercase, punctuation_removal), whitespace split;
    qwen_audio_v1: EvaluationTokenizer(lowercase) only. Char-level languages join the words and split into
    characters, so spaces never count.
    """
    check_variant(variant)
    text = remove_sp(text, language)
    if variant == QWEN2_AUDIO:
        text = _qwen2_audio_normalize(text, language)
        items = evaluation_tokenize(text, lowercase=True, punctuation_removal=True).split()
    else:
        items = evaluation_tokenize(text, lowercase=True, punctuation_removal=False).split()
    if is_char_level(language, variant):
        items = list("".join(items))
    return items
