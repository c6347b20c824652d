"""Varied generation requests over real fixture clips (when ../shared is present) and generated audio."""

from __future__ import annotations

import numpy as np

from tests._paths import FIXTURE_AUDIO


def synth_clip(seconds: float, seed: int) -> np.ndarray:
    """A deterministic 16 kHz 'sound': a few harmonics with vibrato plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 110 + 60 * seed
    x = sum(np.sin(2 * np.pi * f0 * k * t + 0.5 * np.sin(2 * np.pi * 3 * t)) / k for k in range(1, 5))
    return (0.2 * x + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def clip(name: str, fallback_seconds: float, seed: int):
    """A fixture file path if present, else a synthetic array of similar length."""
    path = FIXTURE_AUDIO / name
    return str(path) if path.exists() else synth_clip(fallback_seconds, seed)


def varied_requests() -> list[dict]:
    """Six requests: one clip, two clips in one turn, text only, a base-model raw prompt, a long prompt,
    a resampled 24 kHz clip."""
    story = " ".join(["The quick brown fox jumps over the lazy dog while the band plays on."] * 18)
    return [
        {
            "id": "asr",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", "audio": clip("librispeech_1272_16k.flac", 5.9, 1)},
                        {"type": "text", "text": "What does the person say?"},
                    ],
                }
            ],
        },
        {
            "id": "two-clips",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", "audio": clip("glass_breaking_48k_stereo.mp3", 4.05, 2)},
                        {"type": "audio", "audio": clip("spanish_48k.mp3", 3.2, 3)},
                        {"type": "text", "text": "Compare the two sounds."},
                    ],
                }
            ],
        },
        {"id": "text-only", "messages": [{"role": "user", "content": "Write a haiku about the sea."}]},
        {
            "id": "base-caption",
            "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:",
            "audio": [clip("librispeech_1272_middle_classes.wav", 0.93, 4)],
        },
        {
            "id": "long-prompt",
            "messages": [
                {"role": "system", "content": "You are a careful listener."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": story},
                        {"type": "audio", "audio": synth_clip(2.5, 5)},
                        {"type": "text", "text": "Summarise the story and the sound."},
                    ],
                },
            ],
        },
        {
            "id": "resampled",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", "audio": clip("librispeech_1089_24k.wav", 9.0, 6)},
                        {"type": "text", "text": "Transcribe."},
                    ],
                }
            ],
        },
    ]
