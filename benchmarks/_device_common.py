"""What the device suite's sections share: output, deadlines, timing, synthetic requests, engine set-up."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
H200_BF16_TFLOPS = 989.4  # dense bf16, datasheet (SXM); the measured matmul rate is reported beside it


class Suite:
    """One JSON line per measurement on stdout (and in $OUT/accelerator.jsonl when the device tool sets OUT)."""

    def __init__(self, budget_s: float, smoke: bool):
        self.start, self.budget_s, self.smoke = time.perf_counter(), budget_s, smoke
        out = os.environ.get("OUT")
        self.log = open(Path(out) / "accelerator.jsonl", "a") if out else None  # noqa: SIM115

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def emit(self, section: str, **fields) -> None:
        line = json.dumps({"section": section, "t_s": round(time.perf_counter() - self.start, 1), **fields})
        print(line, flush=True)
        if self.log:
            self.log.write(line + "\n")
            self.log.flush()

    def run(self, name: str, fn, min_left_s: float) -> None:
        """Runs one section unless too little time is left; an exception becomes that section's error line."""
        if self.left() < min_left_s:
            self.emit(name, skipped=f"{self.left():.0f} s left, the section needs about {min_left_s:.0f} s")
            return
        try:
            fn(self)
        except Exception as e:  # noqa: BLE001 - one failing section must not cost the others
            import traceback

            self.emit(name, error=f"{type(e).__name__}: {str(e)[:600]}", where=traceback.format_exc()[-1500:])


def median_time(fn, reps: int, warmup: int = 1) -> float:
    """Median wall seconds of fn() (which must block until its device work is done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def synthetic_requests(config, n: int, seed: int, prompt_range=(20, 300), clip_frames=(200, 3000)):
    """PreparedRequests without audio files: chat-like token ids around 0-2 clips of random log-mel frames,
    the audio placeholders expanded exactly as the processor does (no audio decoding library needed)."""
    from qwen_audio_jax.audio.lengths import num_audio_tokens
    from qwen_audio_jax.text.processor import PreparedRequest

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = list(rng.integers(100, 50000, size=int(rng.integers(*prompt_range))))
        mels, lengths = [], []
        for _ in range(i % 3):
            length = int(rng.integers(*clip_frames))
            mel = np.full((config.audio.num_mel_bins, 3000), -0.8, np.float32)
            mel[:, :length] = rng.standard_normal((config.audio.num_mel_bins, length)).astype(np.float32) * 0.5
            at = int(rng.integers(0, len(ids)))
            ids[at:at] = [151647] + [config.audio_token_id] * num_audio_tokens(length) + [151648]
            mels.append(mel)
            lengths.append(length)
        out.append(PreparedRequest([int(t) for t in ids], mels, lengths))
    return out


def decoder_param_count(params) -> int:
    """Non-embedding decoder parameters (the matmuls every token pays for)."""
    import jax

    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params["language_model"]["layers"]))


def leaf_bytes(tree) -> int:
    import jax

    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def random_params(config, dtype, seed: int = 0, placement=None):
    """Random-weight params of `config` created on the device in `dtype` (normal(0.02) kernels: random data,
    never zeros, which would time faster than real weights)."""
    import jax

    from qwen_audio_jax.model.params import init_params

    params = init_params(config, jax.random.PRNGKey(seed), param_dtype=dtype)
    if placement is not None:
        params = jax.device_put(params, placement.param_shardings(config))
    return params
