"""Session-scoped tokenizer fixtures built from real BPE files (see tests/_tokenizer_dirs.py).

Use with `from tests._tokenizer_fixtures import *` in a test module (or import the fixtures by name).
"""

from __future__ import annotations

import pytest

from tests._oracles import require
from tests._tokenizer_dirs import (
    make_qwen2_audio_tokenizer_dir,
    make_qwen2_audio_tokenizer_json_dir,
    make_qwen_v1_tokenizer_dir,
)

__all__ = [
    "qwen2_tok_dir",
    "qwen2_tok_json_dir",
    "qwen_v1_tok_dir",
    "qwen2_tokenizer",
    "qwen2_json_tokenizer",
    "qwen_v1_tokenizer",
    "hf_fast_tokenizer",
    "hf_slow_tokenizer",
]


@pytest.fixture(scope="session")
def qwen2_tok_dir(tmp_path_factory):
    """vocab.json + merges.txt + tokenizer_config.json with Qwen2-Audio's added tokens (no chat template)."""
    return make_qwen2_audio_tokenizer_dir(tmp_path_factory.mktemp("qwen2_audio_tok"))


@pytest.fixture(scope="session")
def qwen2_tok_json_dir(tmp_path_factory, qwen2_tok_dir):
    """tokenizer.json + tokenizer_config.json only."""
    return make_qwen2_audio_tokenizer_json_dir(tmp_path_factory.mktemp("qwen2_audio_tok_json"), qwen2_tok_dir)


@pytest.fixture(scope="session")
def qwen_v1_tok_dir(tmp_path_factory):
    return make_qwen_v1_tokenizer_dir(tmp_path_factory.mktemp("qwen_audio_v1_tok"))


@pytest.fixture(scope="session")
def qwen2_tokenizer(qwen2_tok_dir):
    from qwen_audio_jax.text.tokenizer import Qwen2AudioTokenizer

    return Qwen2AudioTokenizer.from_dir(qwen2_tok_dir)


@pytest.fixture(scope="session")
def qwen2_json_tokenizer(qwen2_tok_json_dir):
    from qwen_audio_jax.text.tokenizer import Qwen2AudioTokenizer

    return Qwen2AudioTokenizer.from_dir(qwen2_tok_json_dir)


@pytest.fixture(scope="session")
def qwen_v1_tokenizer(qwen_v1_tok_dir):
    from qwen_audio_jax.text.tokenizer import QwenAudioV1Tokenizer

    return QwenAudioV1Tokenizer.from_file(qwen_v1_tok_dir / "qwen.tiktoken")


@pytest.fixture(scope="session")
def hf_fast_tokenizer(qwen2_tok_dir):
    """transformers' Qwen2TokenizerFast on the vocab/merges dir (the parity oracle)."""
    transformers = require("transformers", "the parity oracle")
    return transformers.Qwen2TokenizerFast.from_pretrained(str(qwen2_tok_dir))


@pytest.fixture(scope="session")
def hf_slow_tokenizer(qwen2_tok_dir):
    """transformers' slow (pure Python) Qwen2Tokenizer on the same dir."""
    transformers = require("transformers", "the parity oracle")
    return transformers.Qwen2Tokenizer.from_pretrained(str(qwen2_tok_dir))
