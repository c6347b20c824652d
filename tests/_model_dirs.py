"""A tiny converted model dir (HF random weights + real Qwen2-Audio tokenizer files), built once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qwen_audio_jax.audio.constants import preprocessor_config
from tests._hf_models import GQA, build_hf_model
from tests._tokenizer_dirs import make_qwen2_audio_tokenizer_dir

PREPROCESSOR = preprocessor_config(128)


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


def build_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """A random-weight `tiny()` model dir in our format (real Qwen2 tokenizer, 152k vocab), no conversion."""
    import jax

    from qwen_audio_jax.bundled import write_tokenizer_dir
    from qwen_audio_jax.checkpoint.model_dir import save_params, write_config
    from qwen_audio_jax.checkpoint.safe_write import atomic_directory
    from qwen_audio_jax.config import tiny
    from qwen_audio_jax.model.params import init_params

    config = tiny()
    with atomic_directory(path, "model", overwrite=True) as tmp:
        save_params(tmp, jax.device_get(init_params(config, jax.random.PRNGKey(seed))))
        write_config(tmp, config, "float32")
        write_tokenizer_dir(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return path
