"""Argument types and the flags several commands share. Everything is checked while parsing, so a bad value
answers at once with one line naming the value and the allowed range (and never imports jax)."""

from __future__ import annotations

import argparse
import math

from qwen_audio_jax.runtime import CACHE_FLAG_HELP


def _number(kind, ok, allowed: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {allowed}")
        return value

    parse.__name__ = allowed  # argparse shows the type's name in some messages
    return parse


# Integer flags end up as int32 device values (budgets, top-k, stop ids) or bounded host sizes, and float flags
# as float32: a value past those ranges is refused here instead of overflowing after the model has loaded.
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38

positive_int = _number(int, lambda v: 1 <= v <= INT32_MAX, f"in [1, {INT32_MAX}]")
nonneg_int = _number(int, lambda v: 0 <= v <= INT32_MAX, f"in [0, {INT32_MAX}]")
nonneg_float = _number(float, lambda v: 0 <= v <= FLOAT32_MAX, "in [0, 3.4e38]")
positive_float = _number(float, lambda v: 1.2e-38 <= v <= FLOAT32_MAX, "in [1.2e-38, 3.4e38]")
probability = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")
seed_int = _number(int, lambda v: 0 <= v < 2**32, "in [0, 2**32)")

DTYPES = ("float32", "bfloat16")
ATTENTION = ("auto", "xla", "dot_product", "cudnn")


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
        choices=ATTENTION,
        default="auto",
        help="attention implementation (default auto: cuDNN flash attention on GPU where it applies, the XLA "
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


QUANTIZE = ("none", "int8")
KV_CACHE_DTYPES = ("auto", "int8")


def add_quantize_flag(p: argparse.ArgumentParser) -> None:
    """--quantize (generate, score, eval, serve)."""
    p.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default="none",
        help="int8: weight-only int8 for the decoder's linear layers and the lm_head (per-output-channel scales, "
        "quantized at load; the audio tower keeps the compute dtype)",
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
        default="auto",
        help="auto: the compute dtype; int8: keys and values in int8 with per-token, per-head scales",
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
