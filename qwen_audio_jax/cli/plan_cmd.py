"""`plan`: per-device memory for a model, mesh, batch and length, before any device is touched.

    qwen-audio-jax plan --model qwen2_audio_7b --mesh fsdp=8 --batch 8 --max-len 2048 --train --device tpu-v5e

Shapes only (jax.eval_shape), so it runs on a laptop for any mesh; see sharding/planner.py for what is counted.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from qwen_audio_jax.choices import (
    DEFAULT_KV_CACHE_DTYPE,
    DEFAULT_LORA_BASE_DTYPE,
    DEFAULT_QUANTIZE,
    DEFAULT_REMAT,
    DTYPES,
    KV_CACHE_DTYPES,
    LORA_BASE_DTYPES,
    QUANTIZE_MODES,
    REFERENCE_MODES,
    REMAT_POLICIES,
)
from qwen_audio_jax.cli.args import positive_int, probability
from qwen_audio_jax.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from qwen_audio_jax.config import PRESETS
    from qwen_audio_jax.sharding.planner import DEFAULT_MARGIN, DEVICE_MEMORY_GIB

    p = sub.add_parser(
        "plan",
        help="per-device memory plan (weights, optimizer, KV cache, activations) for a mesh",
        description="Estimates per-device bytes without allocating anything: weights and optimizer "
        "state exactly from the param shardings, KV cache exactly, activations as a documented "
        "estimate. Batch = sequences per step (for DPO: chosen + rejected).",
    )
    p.add_argument(
        "--model",
        required=True,
        help=f"preset name ({', '.join(PRESETS)}) or a model dir written by `qwen-audio-jax convert`",
    )
    p.add_argument(
        "--mesh",
        default="data=1",
        metavar="SPEC",
        help="mesh with explicit sizes, e.g. data=2,fsdp=4,tensor=1 (default: one device)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        required=True,
        help="sequences in memory at once (one micro-batch; DPO: chosen + rejected), padded up to the batch axes",
    )
    p.add_argument(
        "--max-len",
        type=positive_int,
        required=True,
        help="tokens per sequence: the KV cache length for inference (prompt + new tokens)",
    )
    p.add_argument(
        "--prompt-len", type=positive_int, default=None, help="inference prefill length (default: --max-len)"
    )
    p.add_argument("--train", action="store_true", help="plan a training step (AdamW) instead of inference")
    p.add_argument(
        "--param-dtype",
        choices=DTYPES,
        default=None,
        help="stored params (default: the compute dtype for inference, float32 for training)",
    )
    p.add_argument("--compute-dtype", choices=DTYPES, default="bfloat16", help="default: %(default)s")
    p.add_argument(
        "--freeze-audio-encoder",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="training: no gradients or optimizer state for audio_tower/* (default: frozen)",
    )
    p.add_argument(
        "--freeze-projector",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="training: no gradients or optimizer state for the projector (default: trained)",
    )
    p.add_argument(
        "--grad-accum",
        type=positive_int,
        default=1,
        help="training: micro-batches per step; --batch is one micro-batch (adds a gradient accumulator)",
    )
    p.add_argument(
        "--reference",
        choices=("none", *REFERENCE_MODES),
        default="none",
        help="training (DPO): 'model' keeps a frozen fp32 reference copy in memory",
    )
    p.add_argument(
        "--remat",
        choices=REMAT_POLICIES,
        default=DEFAULT_REMAT,
        help="training: what each layer saves for the backward pass (default: none = save all)",
    )
    p.add_argument(
        "--lora",
        action="store_true",
        help="training: LoRA adapters on every linear layer of the language model over a frozen base",
    )
    p.add_argument("--lora-rank", type=positive_int, default=8, help="training with --lora: default %(default)s")
    p.add_argument(
        "--lora-base-dtype",
        choices=LORA_BASE_DTYPES,
        default=DEFAULT_LORA_BASE_DTYPE,
        help="training with --lora: the frozen base (int8: QLoRA); default %(default)s",
    )
    p.add_argument(
        "--lora-audio-encoder", action="store_true", help="training with --lora: adapt the audio tower's layers too"
    )
    dev = p.add_mutually_exclusive_group()
    dev.add_argument(
        "--device",
        default=None,
        metavar="NAME",
        help="say whether the plan fits this accelerator ("
        + ", ".join(f"{k} {v} GiB" for k, v in DEVICE_MEMORY_GIB.items())
        + ")",
    )
    dev.add_argument("--device-memory", default=None, metavar="SIZE", help="memory per device, e.g. 16GiB or 80GB")
    p.add_argument(
        "--margin",
        type=probability,
        default=DEFAULT_MARGIN,
        help=f"usable fraction of device memory (default {DEFAULT_MARGIN}: XLA scratch, fragmentation)",
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default=DEFAULT_QUANTIZE,
        help="inference: int8 weight-only decoder kernels and lm_head (as generate --quantize int8)",
    )
    p.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default=DEFAULT_KV_CACHE_DTYPE,
        help="inference: int8 KV cache with per-token, per-head scales (as generate --kv-cache-dtype int8)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_plan)


def mesh_shape_from_spec(spec: str) -> dict[str, int]:
    """'data=2,fsdp=4' -> {"data": 2, "fsdp": 4, "tensor": 1}. Sizes must be explicit (no -1: there are no
    devices to count); the package's own parser then validates it."""
    from qwen_audio_jax.sharding.mesh import parse_mesh_spec
    from qwen_audio_jax.sharding.rules import MESH_AXES

    sizes = {}
    for part in (spec or "").split(","):
        name, _, value = part.strip().partition("=")
        if name not in MESH_AXES or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(
                f"bad mesh spec {spec!r}: use explicit sizes, e.g. data=2,fsdp=4,tensor=1 "
                f"(axes: {', '.join(MESH_AXES)})."
            )
        sizes[name] = int(value)
    return parse_mesh_spec(spec, math.prod(sizes.values()))


def parse_bytes(text: str) -> int:
    """'16GiB' / '16G' -> 16 * 2**30, '80GB' -> 80e9, '512MiB', '1.5TiB'. A unit is required."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT])(i?B?)\s*", text or "", re.IGNORECASE)
    if not m:
        raise ConfigError(f"bad memory size {text!r}: use e.g. 16GiB, 80GB or 512MiB.")
    power = "KMGT".index(m.group(2).upper()) + 1
    decimal = m.group(3).upper() == "B"  # "GB" is 10**9; "GiB" and bare "G" are 2**30
    return int(float(m.group(1)) * (1000 if decimal else 1024) ** power)


def load_config(model: str):
    """(ModelConfig, display name) for a preset name or a model dir."""
    from qwen_audio_jax.config import PRESETS, preset

    if model in PRESETS:
        return preset(model), model
    if Path(model).is_dir():
        from qwen_audio_jax.checkpoint.model_dir import read_model_dir_config

        return read_model_dir_config(model)[0], str(model)
    raise ConfigError(f"--model {model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a model directory.")


def _plan(args) -> int:
    """Prints the plan; exits 3 when a device size is given and the plan does not fit it."""
    from qwen_audio_jax.sharding import plan_format, planner
    from qwen_audio_jax.sharding.plan_lora import LoraPlan

    if args.lora and not args.train:
        raise ConfigError("--lora plans a training step: add --train.")
    config, name = load_config(args.model)
    mesh = mesh_shape_from_spec(args.mesh)
    device, memory = args.device, None
    if device is not None:
        memory = planner.device_bytes(device)
    elif args.device_memory is not None:
        memory = parse_bytes(args.device_memory)
    request = planner.PlanRequest(
        mesh=mesh,
        batch=args.batch,
        max_len=args.max_len,
        train=args.train,
        prompt_len=args.prompt_len,
        param_dtype=args.param_dtype,
        compute_dtype=args.compute_dtype,
        freeze_audio_encoder=args.freeze_audio_encoder,
        freeze_projector=args.freeze_projector,
        grad_accum=args.grad_accum,
        reference=args.reference,
        remat=args.remat,
        model_name=name,
        quantize=args.quantize,
        kv_cache_dtype=args.kv_cache_dtype,
        lora=LoraPlan(args.lora_rank if args.lora else 0, args.lora_base_dtype, args.lora_audio_encoder),
    )
    result = planner.plan(config, request)
    if args.json:
        print(json.dumps(plan_format.to_dict(result, device, memory, args.margin)))
    else:
        print(plan_format.format_plan(result, device, memory, args.margin))
    if memory is not None and not planner.fits(result, memory, args.margin):
        return 3  # distinct from 2 (bad input): the plan is valid, it just does not fit
    return 0
