"""The device suite: one command that measures this project on an accelerator and prints one JSON line per
figure (also to $OUT/accelerator.jsonl when run by the device tool).

    python benchmarks/accelerator.py                # on a GPU (H200: about 5-7 minutes)
    python benchmarks/accelerator.py --smoke        # the same code on tiny shapes, on the CPU (CI runs this)
    python benchmarks/accelerator.py --prepare      # here, before carrying: the demo clips as tokens + log-mel

Sections, in order of priority (a section that would overrun --budget-s is skipped with a line saying so, and a
failing section prints its error and the rest go on):
  env          versions; the measured ceilings: device-to-device copy bandwidth and the bf16 matmul rate
  correctness  tiny model: fp32 greedy tokens on the device equal the CPU's; bf16, int8 weights, int8 KV agreement;
               the bundled (trained) demo model's answers in each precision
  kernels      cuDNN flash attention vs the XLA path; the int8 decode program's HLO (no full-precision weight copy)
  decode       a 7B-shaped decoder (bf16, int8 weights, int8 weights + int8 KV) at batch 1/8/32/64, context 1024:
               step time against the HBM roofline
  prefill      prompts of 1k/2k/4k tokens: tokens/s and MFU;   encoder: 30 s clips per second
  torch        the same through transformers on the same device, side by side
  dpo_step     a DPO train step's MFU on a reduced-depth 7B
Only the packages of the device image are needed (jax, flax, optax, orbax, torch, transformers, tokenizers...).
"""

from __future__ import annotations

import argparse
import os

# JAX and PyTorch share the device: JAX takes 60 % of its memory, not the default 75 %.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

from _device_checks import (  # noqa: E402
    prepare_demo_inputs,
    section_correctness,
    section_demo_model,
    section_env,
    section_kernels,
)  # noqa: E402
from _device_common import Suite  # noqa: E402
from _device_perf import build_7b, section_decode, section_dpo, section_encoder, section_prefill  # noqa: E402
from _device_torch import section_torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, any backend (CI runs this on the CPU)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting sections after this many seconds")
    ap.add_argument("--prepare", action="store_true", help="write .device/demo_inputs.npz (needs librosa) and exit")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    args = ap.parse_args()
    if args.prepare:
        print(prepare_demo_inputs())
        return
    suite = Suite(args.budget_s, args.smoke)
    skip = set(filter(None, args.skip.split(",")))
    smoke = args.smoke
    # Each (precision, batch) is its own decode program: the full grid for bf16, the ends for int8.
    decode_batches = {"bf16": (1, 8, 32, 64), "int8_weights": (1, 8, 64), "int8_weights_int8_kv": (64,)}
    if smoke:
        decode_batches = {"bf16": (1, 2), "int8_weights": (2,), "int8_weights_int8_kv": (2,)}
    context = 1024 if not smoke else 48
    lengths = (1024, 2048, 4096) if not smoke else (64, 200)

    def run(name, fn, need_s):
        if name not in skip:
            suite.run(name, fn, need_s)

    run("env", section_env, 10)
    run("kernels", section_kernels, 30)
    run("correctness", section_correctness, 40)
    model = {}

    def perf(s):
        model["config"], model["modes"] = build_7b(s)
        if "decode" not in skip:
            section_decode(s, model["modes"], model["config"], decode_batches, context)
        if "prefill" not in skip:
            section_prefill(s, {k: model["modes"][k] for k in ("bf16", "int8_weights")}, model["config"], lengths)
        if "encoder" not in skip:
            section_encoder(s, model["modes"]["bf16"][0], model["config"])

    run("perf", perf, 90)
    model.clear()
    run(
        "torch",
        lambda s: section_torch(s, build_7b_config(smoke), lengths[:2], (1, 8) if not smoke else (1,), context),
        60,
    )
    run("dpo_step", lambda s: section_dpo(s, smoke), 60)
    run("demo_model", section_demo_model, 40)
    suite.emit("done", seconds=round(suite.budget_s - suite.left(), 1))


def build_7b_config(smoke: bool):
    from _device_perf import model_config

    return model_config(smoke)


if __name__ == "__main__":
    main()
