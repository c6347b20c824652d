"""A tiny converted model dir (HF random weights + real Qwen2-Audio tokenizer files), built once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests._hf_models import GQA, build_hf_model
from tests._tokenizer_dirs import make_qwen2_audio_tokenizer_dir

PREPROCESSOR = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "Qwen2AudioProcessor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
}


def make_tiny_hf_dir(path: Path, seed: int = 11) -> Path:
    """A transformers-loadable Qwen2-Audio dir: random GQA weights, real tokenizer, preprocessor config."""
    model = build_hf_model(GQA, seed=seed)
    model.save_pretrained(path)
    tok = make_qwen2_audio_tokenizer_dir(path / "_tok")
    for f in tok.iterdir():
        shutil.copy2(f, path / f.name)
    shutil.rmtree(tok)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return path


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    return make_tiny_hf_dir(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_hf_dir, tmp_path_factory) -> Path:
    from qwen_audio_jax.conversion.hf_to_jax import convert

    dst = tmp_path_factory.mktemp("tiny") / "jax"
    convert(tiny_hf_dir, dst, dtype="float32", progress=False, log=lambda m: None)
    return dst
