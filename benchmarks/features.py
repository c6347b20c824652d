"""Benchmark: Whisper log-mel features, JAX (`log_mel_jax`) vs transformers' WhisperFeatureExtractor.

A batch of 32 clips of 5-30 s (the real fixture clips cut/tiled to those lengths when ../shared is present,
otherwise synthetic noise + sines). The reference is the extractor's default path (torch installed -> batched
torch.stft) called on the list of arrays, exactly as Qwen2AudioProcessor calls it. The JAX time covers the whole
host path: pad_batch -> host->device transfer -> jitted log_mel_jax -> block_until_ready -> back to numpy.
Both are timed after a warm-up, interleaved, and the median of the repeats is reported.

Prints exactly one JSON line.  Usage: python benchmarks/features.py [--batch 32] [--repeats 7] [--n-mels 128]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _clips(batch: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """`batch` float32 16 kHz waveforms with lengths drawn uniformly in [5 s, 30 s]."""
    from qwen_audio_jax.audio.load import load_audio

    rng = np.random.default_rng(seed)
    lengths = rng.integers(5 * 16000, 30 * 16000 + 1, size=batch)
    shared = Path(os.environ.get("QWEN_AUDIO_JAX_SHARED", REPO.parent / "shared")) / "fixtures" / "audio"
    sources = [load_audio(p) for p in sorted(shared.iterdir()) if p.is_file()] if shared.is_dir() else []
    if sources:
        # Tile each source up to the target length (then cut), so real speech/music fills every clip.
        out = [np.resize(sources[i % len(sources)], n).astype(np.float32) for i, n in enumerate(lengths)]
        return out, "fixtures"
    t = np.arange(lengths.max()) / 16000.0
    out = []
    for n in lengths:
        f0 = rng.uniform(100, 4000)
        wav = 0.3 * np.sin(2 * np.pi * f0 * t[:n]) + 0.05 * rng.standard_normal(n)
        out.append(wav.astype(np.float32))
    return out, "synthetic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n-mels", type=int, default=128, choices=(80, 128))
    args = ap.parse_args()

    warnings.simplefilter("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import jax
    from transformers import WhisperFeatureExtractor

    from qwen_audio_jax.audio.features import log_mel_jax, pad_batch

    wavs, source = _clips(args.batch)
    extractor = WhisperFeatureExtractor(feature_size=args.n_mels)

    def reference() -> np.ndarray:
        return extractor(
            wavs, sampling_rate=16000, return_tensors="np", padding="max_length", return_attention_mask=True
        )["input_features"]

    def ours() -> np.ndarray:
        wavs_BN, _ = pad_batch(wavs)
        mel = log_mel_jax(jax.device_put(wavs_BN), n_mels=args.n_mels)
        return np.asarray(mel.block_until_ready())

    ref_out, jax_out = reference(), ours()  # warm-up (compiles log_mel_jax once)
    ref_t, jax_t = [], []
    for _ in range(args.repeats):
        for fn, acc in ((reference, ref_t), (ours, jax_t)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    jax_s, ref_s = float(np.median(jax_t)), float(np.median(ref_t))
    print(
        json.dumps(
            {
                "benchmark": "features",
                "batch": args.batch,
                "n_mels": args.n_mels,
                "clips": source,
                "jax_s": round(jax_s, 4),
                "reference_s": round(ref_s, 4),
                "speedup": round(ref_s / jax_s, 2),
                "jax_min_s": round(min(jax_t), 4),
                "reference_min_s": round(min(ref_t), 4),
                "max_abs_diff": float(np.abs(jax_out - ref_out).max()),
                "device": jax.devices()[0].platform,
                "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus",
            }
        )
    )


if __name__ == "__main__":
    main()
