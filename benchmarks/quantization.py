"""Quality of the reduced precisions, on this CPU: bf16 compute, int8 weights (`--quantize int8`) and an int8
KV cache (`--kv-cache-dtype int8`) against fp32. One JSON line per model.

1. The bundled demo model on its full held-out split (regenerated with scripts/make_demo_data.py --only-heldout,
   which needs espeak-ng): every figure the demo reports (digit / word WER, sound answers, sound class), per
   precision. The goal: each within 1 point of fp32.
2. The 142M benchmark model (benchmarks/_common.py; random weights, real vocab): greedy generation with log-probs
   on varied requests; per precision, the requests whose tokens equal fp32's, and the mean absolute difference of
   the per-token log-probs over the tokens both produced (the common prefix).

    python benchmarks/quantization.py [--skip-demo] [--skip-142m] [--requests 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, build_model, machine

PRECISIONS = {
    "fp32": ("float32", "none", "auto"),
    "bf16": ("bfloat16", "none", "auto"),
    "bf16_int8_weights": ("bfloat16", "int8", "auto"),
    "bf16_int8_kv": ("bfloat16", "none", "int8"),
    "bf16_int8_weights_int8_kv": ("bfloat16", "int8", "int8"),
}


def _generate(model_dir: Path, requests, precision: str, batch_size: int, logprobs: bool, max_new: int):
    import jax.numpy as jnp

    from qwen_audio_jax.api import load
    from qwen_audio_jax.generation.engine import EngineOptions
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.jobs.driver import run_list
    from qwen_audio_jax.jobs.generate import GenerateJob

    dtype, quantize, kv = PRECISIONS[precision]
    model = load(model_dir, dtype=jnp.dtype(dtype), quantize=quantize)
    options = GenerationOptions(max_new_tokens=max_new, return_logprobs=logprobs)
    job = GenerateJob(model, options, EngineOptions(batch_size=batch_size, kv_cache_dtype=kv), base_dir=None)
    t = time.perf_counter()
    return run_list(job, requests), time.perf_counter() - t


def demo_split() -> dict:
    from qwen_audio_jax.demo.bundle import DEMO_MODEL
    from qwen_audio_jax.demo.scoring import score_answers
    from qwen_audio_jax.jobs.generate import resolve_audio

    data = Path(tempfile.mkdtemp(prefix="qaj-heldout-"))
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_demo_data.py"), str(data), "--only-heldout"], check=True
    )
    requests = [json.loads(line) for line in (data / "heldout_requests.jsonl").read_text().splitlines()]
    requests = [resolve_audio(r, data) for r in requests]
    refs = [json.loads(line) for line in (data / "heldout_references.jsonl").read_text().splitlines()]
    out = {}
    for precision in PRECISIONS:
        results, seconds = _generate(DEMO_MODEL, requests, precision, 32, False, 24)
        figures = score_answers((r["kind"], r["expected"], res["text"]) for r, res in zip(refs, results))
        out[precision] = {
            "digits_wer": figures["wer"]["digits"],
            "words_wer": figures["wer"]["words"],
            "sounds_exact": figures["accuracy"]["sounds"],
            "sound_class": figures["sound_class"]["accuracy"],
            "errors": sum(r["error"] is not None for r in results),
            "seconds": round(seconds, 1),
        }
    base = out["fp32"]
    keys = ("digits_wer", "words_wer", "sounds_exact", "sound_class")
    worst = {p: max(abs(v[k] - base[k]) * 100 for k in keys) for p, v in out.items()}
    return {"requests": len(requests), "figures": out, "largest_change_points": worst}


def model_142m(n: int) -> dict:
    from throughput import make_corpus

    work = Path(tempfile.mkdtemp(prefix="qaj-quant-"))
    _, model_dir = build_model(work)
    requests = make_corpus(work, n)
    for r in requests:
        r["max_new_tokens"] = 48
    runs = {p: _generate(model_dir, requests, p, 8, True, 48)[0] for p in PRECISIONS}
    base = runs["fp32"]
    out = {}
    for precision, results in runs.items():
        same, diffs = 0, []
        for a, b in zip(base, results):
            same += a["token_ids"] == b["token_ids"]
            k = next((i for i, (x, y) in enumerate(zip(a["token_ids"], b["token_ids"])) if x != y), None)
            k = min(len(a["token_ids"]), len(b["token_ids"])) if k is None else k + 1  # include the first mismatch
            diffs += list(np.abs(np.asarray(a["logprobs"][:k]) - np.asarray(b["logprobs"][:k])))
        out[precision] = {
            "identical_requests": f"{same}/{len(base)}",
            "mean_abs_token_logprob_diff": round(float(np.mean(diffs)), 5),
            "tokens_compared": len(diffs),
        }
    return {"requests": n, "per_precision": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-142m", action="store_true")
    ap.add_argument("--requests", type=int, default=32)
    args = ap.parse_args()
    if not args.skip_demo:
        print(json.dumps({"benchmark": "quantization", "model": "demo held-out split", **demo_split(),
                          "machine": machine()}), flush=True)  # fmt: skip
    if not args.skip_142m:
        print(json.dumps({"benchmark": "quantization", "model": "142M random weights", **model_142m(args.requests),
                          "machine": machine()}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
