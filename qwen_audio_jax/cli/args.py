"""Argument types and the flags several commands share. Everything is checked while parsing, so a bad value
answers at once with one line naming the value and the allowed range (and never imports jax)."""

from __future__ import annotations

import argparse
import math

from qwen_audio_jax.choices import (
    ATTENTION_IMPLEMENTATIONS,
    DEFAULT_ATTENTION,
    DEFAULT_BATCH_SIZE,
    DEFAULT_KV_CACHE_DTYPE,
    DEFAULT_LONG_AUDIO,
    DEFAULT_QUANTIZE,
    DTYPES,
    KV_CACHE_DTYPES,
    LONG_AUDIO_POLICIES,
    NONNEG_FLOAT,
    NONNEG_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    PROBABILITY,
    QUANTIZE_MODES,
    SEED,
    Range,
    default_workers,
)
from qwen_audio_jax.runtime import CACHE_FLAG_HELP


def _number(r: Range):
    """An argparse type for numbers in the range `r` (its `range` attribute says which, for tests and --help)."""

    def parse(text: str):
        try:
            value = r.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if r.kind is int else 'a number'}"
            ) from None
        if r.kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value not in r:
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {r.text}")
        return value

    parse.__name__ = r.text  # argparse shows the type's name in some messages
    parse.range = r
    return parse


# Integer flags end up as int32 device values (budgets, top-k, stop ids) or bounded host sizes, and float flags
# as float32: a value past those ranges (choices.py) is refused here instead of overflowing after the model has
# loaded.
positive_int = _number(POSITIVE_INT)
nonneg_int = _number(NONNEG_INT)
nonneg_float = _number(NONNEG_FLOAT)
positive_float = _number(POSITIVE_FLOAT)
probability = _number(PROBABILITY)
seed_int = _number(SEED)


def add_batch_size_flag(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help=f"{help} (default: %(default)s)")


def add_workers_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=positive_int,
        default=default_workers(),
        help="threads preparing requests (audio, features, tokens) ahead of the device (default: one per CPU core, "
        "at most 8: %(default)s here)",
    )


def add_long_audio_flag(p: argparse.ArgumentParser, what: str = "clips") -> None:
    p.add_argument(
        "--long-audio",
        choices=LONG_AUDIO_POLICIES,
        default=DEFAULT_LONG_AUDIO,
        help=f"{what} over 30 s: keep the first 30 s (reference) or split into 30 s clips (default: %(default)s)",
    )


def add_runtime_flags(p: argparse.ArgumentParser, *, mesh_help: str | None = None) -> None:
    """--mesh, --dtype, --attention, --compilation-cache, --distributed, --no-progress."""
    p.add_argument(
        "--mesh",
        default=None,
        metavar="SPEC",
        help=mesh_help
        or "device mesh, e.g. data=8 or data=2,fsdp=2,tensor=2 (-1 = the remaining devices); default: one device",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="compute dtype (default: bfloat16 on accelerators, float32 on CPU)",
    )
    p.add_argument(
        "--attention",
        choices=ATTENTION_IMPLEMENTATIONS,
        default=DEFAULT_ATTENTION,
        help="attention implementation (default %(default)s: cuDNN flash attention on GPU where it applies, the XLA "
        "einsum path elsewhere; the summary says which each kind of call ran)",
    )
    p.add_argument("--compilation-cache", default=None, metavar="DIR", help=CACHE_FLAG_HELP)
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host: run the same command on every host)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def start_runtime(args) -> None:
    """Multi-host init and the compilation cache, in that order (both before anything compiles)."""
    import jax

    from qwen_audio_jax.runtime import setup_compilation_cache

    if getattr(args, "distributed", False):
        from qwen_audio_jax.errors import ConfigError

        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:  # no coordinator found in the environment, or it cannot be reached
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(
                f"--distributed could not start the multi-host runtime ({first}); it needs a coordinator: run it "
                "on a cluster JAX detects (TPU pod, SLURM, Open MPI) or set JAX_COORDINATOR_ADDRESS, "
                "JAX_NUM_PROCESSES and JAX_PROCESS_ID."
            ) from None
    setup_compilation_cache(args.compilation_cache)


def compute_dtype(args):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, None: None}[args.dtype]


def add_quantize_flag(p: argparse.ArgumentParser) -> None:
    """--quantize (generate, score, eval, serve)."""
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default=DEFAULT_QUANTIZE,
        help="int8: weight-only int8 for the decoder's linear layers and the lm_head (per-output-channel scales, "
        "quantized at load; the audio tower keeps the compute dtype; default: %(default)s)",
    )


def add_adapter_flag(p: argparse.ArgumentParser) -> None:
    """--adapter (generate, score, eval, serve): a LoRA adapter merged into --model's weights at load."""
    p.add_argument(
        "--adapter",
        default=None,
        metavar="DIR",
        help="a LoRA adapter in PEFT's format (adapter_config.json + adapter_model.safetensors: one made by PEFT, "
        "LLaMA-Factory, ms-swift or a LoRA training run here) for --model; merged into the weights at load, so "
        "it runs at the base model's speed (before --quantize)",
    )


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """The generation engine's sizing (generate, eval, serve): one flag per field of EngineOptions."""
    p.add_argument(
        "--max-len",
        type=positive_int,
        default=None,
        help="prompt + max_new_tokens of one request, at most (default and ceiling: the model's context, 8192)",
    )
    p.add_argument(
        "--kv-cache-tokens",
        type=positive_int,
        default=None,
        help="size of the paged KV cache in tokens over all slots (default: 2048 per slot, and at least --max-len)",
    )
    p.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default=DEFAULT_KV_CACHE_DTYPE,
        help="auto: the compute dtype; int8: keys and values in int8 with per-token, per-head scales "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--precompile",
        action="store_true",
        help="compile the engine's whole program set before the first request (a progress bar per program)",
    )


def engine_options(args):
    """EngineOptions from the flags of add_engine_flags and --batch-size."""
    from qwen_audio_jax.generation.engine import EngineOptions

    return EngineOptions(
        batch_size=args.batch_size,
        max_len=args.max_len,
        kv_cache_tokens=args.kv_cache_tokens,
        kv_cache_dtype=args.kv_cache_dtype,
        precompile=args.precompile,
    )
