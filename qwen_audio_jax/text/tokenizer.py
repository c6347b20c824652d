"""Tokenizers for Qwen2-Audio (Hugging Face `tokenizers`) and Qwen-Audio v1 (`tiktoken`), behind one interface
(`tokenizer_base.Tokenizer`). Both share the same 151,643 byte-level BPE ranks (docs/reference.md §4.1) and
differ in the special tokens after them. `load_tokenizer(model_dir)` picks one from the files present.
"""

from __future__ import annotations

from pathlib import Path

from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.text.tokenizer_base import (  # noqa: F401 - the names callers use
    AUDIO_BOS,
    AUDIO_EOS,
    AUDIO_TOKEN,
    ENDOFTEXT,
    IM_END,
    IM_START,
    PAT_STR,
    Tokenizer,
    bytes_to_unicode,
)
from qwen_audio_jax.text.tokenizer_qwen2 import Qwen2AudioTokenizer, build_bpe  # noqa: F401
from qwen_audio_jax.text.tokenizer_v1 import QwenAudioV1Tokenizer, v1_special_tokens  # noqa: F401


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The tokenizer of a model directory: tokenizer.json / vocab.json -> Qwen2-Audio, qwen.tiktoken -> v1."""
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "vocab.json").is_file():
        return Qwen2AudioTokenizer.from_dir(model_dir)
    if (model_dir / "qwen.tiktoken").is_file():
        return QwenAudioV1Tokenizer.from_file(model_dir / "qwen.tiktoken")
    raise ConfigError(
        f"no tokenizer files in {model_dir}: expected tokenizer.json, vocab.json + merges.txt (Qwen2-Audio) "
        "or qwen.tiktoken (Qwen-Audio v1)"
    )
