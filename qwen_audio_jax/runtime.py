"""Process-level JAX settings shared by the commands: the persistent compilation cache."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen-audio-jax" / "xla"


def setup_compilation_cache(cache_dir: str | Path | None = DEFAULT_CACHE_DIR) -> Path | None:
    """Turns on JAX's persistent compilation cache (on by default: a long job's buckets compile once per machine,
    not once per run). `None` or "" turns it off. The env var QWEN_AUDIO_JAX_COMPILATION_CACHE overrides."""
    import jax

    env = os.environ.get("QWEN_AUDIO_JAX_COMPILATION_CACHE")
    if env is not None:
        cache_dir = env or None
    if not cache_dir:
        return None
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
