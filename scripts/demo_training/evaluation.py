"""Stage 5: the held-out evaluation (`qwen-audio-jax generate` + the demo scorer), and what records the held-out
audio and the tools that made it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from .runner import cli, run


def score(results_path: Path, refs_path: Path) -> dict:
    """The demo scorer (qwen_audio_jax.demo.scoring) over every held-out request, and per prompt style."""
    from qwen_audio_jax.demo.scoring import score_answers

    refs = [json.loads(line) for line in refs_path.read_text().splitlines()]
    got = {r["id"]: r.get("text") for r in map(json.loads, results_path.read_text().splitlines())}
    figures = score_answers((r["kind"], r["expected"], got.get(r["id"])) for r in refs)
    prompts = sorted({r["prompt"] for r in refs})
    figures["by_prompt"] = {
        p: score_answers((r["kind"], r["expected"], got.get(r["id"])) for r in refs if r["prompt"] == p)
        for p in prompts
    }
    figures["examples"] = [{"id": r["id"], "expected": r["expected"], "got": got.get(r["id"])} for r in refs[:400]]
    return figures


def evaluate(model: Path, data: Path, out: Path, batch_size: int) -> tuple[dict, float]:
    out = out.resolve()  # generate runs in the data dir (relative audio paths)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    args = ["--model", str(model), "--input", str(data / "heldout_requests.jsonl"), "--output", str(results)]
    args += ["--overwrite", "--max-new-tokens", "24", "--batch-size", str(batch_size), "--no-progress"]
    # cwd=data: generate resolves relative audio paths from the working directory
    secs = run(
        cli() + ["generate", *args], f"evaluate {model.parent.name}/{model.name}", out / "generate.log", cwd=data
    )
    figures = score(results, data / "heldout_references.jsonl")
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures, secs


def headline(f: dict) -> dict:
    return {
        "wer_digits": f["wer"].get("digits"),
        "wer_words": f["wer"].get("words"),
        "sound_accuracy": f["accuracy"].get("sounds"),
        "sound_class_accuracy": f.get("sound_class", {}).get("accuracy"),
    }


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    return out.split(":")[1].split()[0] if ":" in out else out.strip()


def heldout_clips_digest(data: Path) -> str:
    """sha256 over the held-out clips' decoded samples, in manifest order (the same audio, whatever FLAC did)."""
    import hashlib

    from qwen_audio_jax.audio.load import load_audio

    h = hashlib.sha256()
    for line in (data / "manifest_heldout.jsonl").read_text().splitlines():
        h.update(np.ascontiguousarray(load_audio(data / json.loads(line)["path"]), np.float32).tobytes())
    return h.hexdigest()
