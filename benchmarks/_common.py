"""What the inference benchmarks share: the benchmark model (built in transformers, saved, converted with the
CLI as a user would) and the clips (fixture clips cut to length, synthetic audio when ../shared is absent)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# A ~142M-parameter Qwen2-Audio: real 156,032 vocab, d=384, 8 decoder + 4 encoder layers, random weights.
SPEC = dict(
    audio_d=384,
    audio_layers=4,
    audio_heads=6,
    audio_ffn=1536,
    hidden=384,
    layers=8,
    heads=6,
    kv_heads=6,
    inter=1024,
    vocab=156032,
)
STOP = (151645, 151643)


def build_model(work: Path):
    """(transformers model, our model dir): random weights saved as an HF checkpoint with the bundled tokenizer,
    then `qwen-audio-jax convert` (lossless: fp32 stays fp32)."""
    from qwen_audio_jax.audio.constants import preprocessor_config
    from qwen_audio_jax.bundled import write_tokenizer_dir
    from tests._hf_models import TinySpec, build_hf_model

    hf = build_hf_model(TinySpec("bench", **SPEC), seed=0)
    hf.save_pretrained(work / "hf")
    write_tokenizer_dir(work / "hf")
    (work / "hf" / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(128)))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_audio_jax.cli.main",
            "convert",
            str(work / "hf"),
            str(work / "jax"),
            "--no-progress",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return hf, work / "jax"


def fixture_audio(name: str, seconds: float, offset_s: float, seed: int) -> tuple[np.ndarray, bool]:
    """`seconds` of a fixture clip from `offset_s` (16 kHz mono), or a synthetic clip when it is absent."""
    from qwen_audio_jax.audio.load import load_audio
    from tests._paths import FIXTURE_AUDIO
    from tests._requests import synth_clip

    path = FIXTURE_AUDIO / name
    if not path.exists():
        return synth_clip(seconds, seed=seed), False
    wav = load_audio(path)
    start = int(16000 * offset_s) if len(wav) > 16000 * (seconds + offset_s) else 0
    return wav[start : start + int(seconds * 16000)], True


def run_cli(argv: list[str], env: dict | None = None) -> tuple[float, dict]:
    """A fresh `qwen-audio-jax` process, timed from the shell's point of view; returns (seconds, summary line)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_audio_jax.cli.main", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"CLI failed: {proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stderr.strip().splitlines()[-1])


def machine() -> str:
    import jax
    import torch

    return (
        f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
