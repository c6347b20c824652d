"""Process-level JAX settings shared by the commands: the persistent compilation cache."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen-audio-jax" / "xla"
CACHE_ENV = "QWEN_AUDIO_JAX_COMPILATION_CACHE"
CACHE_FLAG_HELP = f"persistent XLA cache dir (default ${CACHE_ENV} or ~/.cache/qwen-audio-jax/xla; '' disables)"


def resolve_cache_dir(flag: str | Path | None) -> Path | None:
    """Where the cache lives: the `--compilation-cache` value if given, else $QWEN_AUDIO_JAX_COMPILATION_CACHE,
    else DEFAULT_CACHE_DIR. An empty string (from either) turns the cache off (None)."""
    if flag is None:
        flag = os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR)
    return Path(flag).expanduser() if str(flag) else None


def setup_compilation_cache(flag: str | Path | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache (on by default: a long job's buckets compile once per machine,
    not once per run). Call before the first compilation: JAX decides once per process whether it caches."""
    import jax

    path = resolve_cache_dir(flag)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
