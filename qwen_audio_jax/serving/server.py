"""Start and stop: the engine loop's thread warms up (compiles the whole program set) while uvicorn already answers
`/health` with 503; once it is warm, `/health` answers 200 and a `ready:` line goes to stderr.

SIGTERM (or Ctrl-C): uvicorn stops accepting connections and lets the requests in flight finish, up to the drain
grace period (requests that arrive on open connections meanwhile get a 503); then the engine loop finishes what it
holds and the command exits 0.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import logging
import signal
import socket
import sys

from qwen_audio_jax.audio.decoder_warmup import realize_decoder_types
from qwen_audio_jax.serving.app import build_app
from qwen_audio_jax.serving.engine_loop import EngineLoop
from qwen_audio_jax.serving.media import MediaPolicy
from qwen_audio_jax.serving.metrics import Metrics
from qwen_audio_jax.serving.state import ServerState


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    served_name: str
    policy: MediaPolicy
    api_key: str | None = None
    max_queue: int = 256
    max_body_bytes: int = 64 * 2**20
    drain_seconds: float = 30.0
    workers: int = 2
    progress: bool = True


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything loads (port 0: any free port; the `ready:` line names it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(model, engine, options: ServeOptions, sock: socket.socket) -> int:
    import uvicorn

    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def ready(seconds: float) -> None:
        print(
            f"ready: {url} (model {options.served_name!r}, {engine.batch_size} slots, "
            f"{engine.program_bound()} programs compiled in {seconds:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    loop = EngineLoop(engine, lambda: engine.precompile(options.progress), ready)
    realize_decoder_types()  # before the pool: soundfile's cffi types are not safe to build concurrently
    pool = futures.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="prepare")
    metrics = Metrics(engine.batch_size, lambda: len(loop.source), lambda: loop.running, lambda: loop.cancelled)
    state = ServerState(
        model=model,
        loop=loop,
        metrics=metrics,
        policy=options.policy,
        pool=pool,
        served_name=options.served_name,
        api_key=options.api_key,
        max_queue=options.max_queue,
        max_body_bytes=options.max_body_bytes,
    )
    config = uvicorn.Config(
        build_app(state),
        log_level="warning",
        timeout_graceful_shutdown=int(max(1, options.drain_seconds)),
        access_log=False,
    )
    server = uvicorn.Server(config)
    state.draining = lambda: server.should_exit
    loop.on_failed = lambda: setattr(server, "should_exit", True)
    print(f"listening on {url}; compiling the engine's programs before /health answers 200", file=sys.stderr)
    logging.getLogger("qwen_audio_jax.serving").addHandler(logging.StreamHandler(sys.stderr))
    loop.start()
    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers that is a no-op, so a
    # drained server exits 0 (its own handlers are installed while it runs).
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        drained = loop.stop(options.drain_seconds)
        pool.shutdown(wait=False, cancel_futures=True)
    if loop.failed is not None:
        print(f"error: the engine failed to start: {loop.failed}", file=sys.stderr)
        return 1
    print("stopped" + ("" if drained else " (requests still running at the end of the grace period)"), file=sys.stderr)
    return 0
