"""A synthetic audio preference set: clips of synthesised sounds; the chosen answer names the sound, the rejected
answer names another one. Learnable only by listening (every answer is used equally often)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SOUNDS = ("a low hum", "a high whistle", "white noise", "a rising chirp")
SR = 16000


def synth(kind: int, rng: np.random.Generator) -> np.ndarray:
    seconds = rng.uniform(0.6, 1.2)
    t = np.arange(int(seconds * SR)) / SR
    amp = rng.uniform(0.2, 0.5)
    if kind == 0:
        x = np.sin(2 * np.pi * rng.uniform(90, 160) * t)
    elif kind == 1:
        x = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
    elif kind == 2:
        x = rng.standard_normal(t.shape)
    else:
        f0, f1 = rng.uniform(200, 400), rng.uniform(1500, 2500)
        x = np.sin(2 * np.pi * (f0 + (f1 - f0) * t / seconds / 2) * t)
    return (amp * x + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def write_preference_set(directory: Path, n: int, seed: int, preference: bool = True) -> Path:
    """n examples as JSONL (our format) with wav files beside it; returns the JSONL path."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        kind = i % len(SOUNDS)
        wrong = (kind + 1 + int(rng.integers(0, len(SOUNDS) - 1))) % len(SOUNDS)
        wav = directory / f"s{seed}_{i}.wav"
        sf.write(wav, synth(kind, rng), SR)
        messages = [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": wav.name}, {"type": "text", "text": "What sound is this?"}],
            }
        ]
        if not preference:
            lines.append({"id": f"{seed}-{i}", "messages": messages + [{"role": "assistant", "content": SOUNDS[kind]}]})
        else:
            lines.append(
                {
                    "id": f"{seed}-{i}",
                    "messages": messages,
                    "chosen": SOUNDS[kind],
                    "rejected": SOUNDS[wrong],
                    "label": kind,
                }
            )
    path = directory / ("prefs.jsonl" if preference else "sft.jsonl")
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path
