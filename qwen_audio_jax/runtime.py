"""Process-level JAX settings shared by the commands: the persistent compilation cache, and counting what
compiles (for the job summaries and the tests that prove a warm second run compiles nothing).

Nothing here imports jax at module level: the command line reads CACHE_FLAG_HELP while building its parser.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from qwen_audio_jax.errors import OutputError

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen-audio-jax" / "xla"
CACHE_ENV = "QWEN_AUDIO_JAX_COMPILATION_CACHE"
CACHE_FLAG_HELP = f"persistent XLA cache dir (default ${CACHE_ENV} or ~/.cache/qwen-audio-jax/xla; '' disables)"


def resolve_cache_dir(flag: str | Path | None) -> Path | None:
    """Where the cache lives: the `--compilation-cache` value if given, else $QWEN_AUDIO_JAX_COMPILATION_CACHE,
    else DEFAULT_CACHE_DIR. An empty string (from either) turns the cache off (None)."""
    if flag is None:
        flag = os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR)
    return Path(flag).expanduser().absolute() if str(flag) else None


def setup_compilation_cache(flag: str | Path | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache (on by default: a long job's buckets compile once per machine,
    not once per run). Call before the first compilation: JAX decides once per process whether it caches.
    Every program is cached, however fast it compiled, so a repeated job compiles nothing."""
    import jax

    track_compilations()
    path = resolve_cache_dir(flag)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"cannot create the compilation cache {path} ({e.strerror}); pass --compilation-cache "
            "DIR with a writable DIR, or --compilation-cache '' to run without it."
        ) from e
    if not os.access(path, os.W_OK):
        raise OutputError(
            f"the compilation cache {path} is not writable; pass --compilation-cache DIR with a "
            "writable DIR, or --compilation-cache '' to run without it."
        )
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@dataclasses.dataclass
class CompileStats:
    """What this process compiled so far (from jax.monitoring events)."""

    backend_compiles: int = 0  # XLA compilations requested (cache hits included)
    cache_hits: int = 0  # of which were served from the persistent cache
    seconds: float = 0.0  # tracing + lowering + compiling (or fetching from the cache)

    @property
    def compiled(self) -> int:
        """Programs XLA really compiled (not served by the persistent cache)."""
        return self.backend_compiles - self.cache_hits


COMPILE_STATS = CompileStats()
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_tracking = False


def track_compilations() -> CompileStats:
    """Registers the jax.monitoring listeners once per process; returns the running totals."""
    global _tracking
    if _tracking:
        return COMPILE_STATS
    import jax

    def on_duration(name: str, seconds: float, **_):
        if name in _COMPILE_EVENTS:
            COMPILE_STATS.seconds += seconds
        if name == "/jax/core/compile/backend_compile_duration":
            COMPILE_STATS.backend_compiles += 1

    def on_event(name: str, **_):
        if name == "/jax/compilation_cache/cache_hits":
            COMPILE_STATS.cache_hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    _tracking = True
    return COMPILE_STATS
