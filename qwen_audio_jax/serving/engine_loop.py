"""The one engine loop: a thread that owns the device and runs `Engine.run` over a queue that never runs dry
until the server stops (docs/decisions.md §18: HTTP only parses, validates, enqueues and streams back).

Every prepared request is put on the queue with a sink, a callable the loop calls on its own thread with the
request's events: ("tokens", ids, logprobs, top) after each prefill and decode chunk (the engine's `on_tokens`
hook; top: None, or each token's most likely alternatives), then ("done", GenerationOutput) or ("error",
message). The HTTP side turns the sink into an asyncio queue (`call_soon_threadsafe`). `cancel(tag)` takes a
request off the queue, or has the engine drop it at its next round (a client that went away frees its slot at
once). `stop()` closes the queue: the engine finishes what it holds and the thread ends (the SIGTERM drain).

If the engine itself raises (a bug: device failures are already isolated per request by the engine), the requests
it held get an "error" event, its slots are reset, and the loop goes on with the next requests.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable

from qwen_audio_jax.generation.engine import Engine, EngineRequest

log = logging.getLogger("qwen_audio_jax.serving")
Sink = Callable[[tuple], None]


class QueueSource:
    """A RequestSource fed by the HTTP side; exhausted only once closed and empty."""

    def __init__(self):
        self._queue: collections.deque[EngineRequest] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._cancelled: set = set()
        self.taken = 0  # requests handed to the engine so far

    def put(self, request: EngineRequest) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._queue.append(request)
            self._cond.notify_all()
            return True

    def take(self, n: int, block: bool) -> list[EngineRequest]:
        with self._cond:
            while block and not self._queue and not self._closed:
                self._cond.wait()
            out = [self._queue.popleft() for _ in range(min(n, len(self._queue)))]
            self.taken += len(out)
            return out

    @property
    def exhausted(self) -> bool:
        with self._cond:
            return self._closed and not self._queue

    def cancelled(self) -> set:
        with self._cond:
            out, self._cancelled = self._cancelled, set()
            return out

    def cancel(self, tag) -> None:
        with self._cond:
            for request in self._queue:
                if request.tag == tag:
                    self._queue.remove(request)
                    return
            self._cancelled.add(tag)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._queue)


class EngineLoop:
    def __init__(self, engine: Engine, warm_up: Callable[[], None], on_ready: Callable[[float], None] = lambda s: None):
        self.engine, self._warm_up, self._on_ready = engine, warm_up, on_ready
        self.source = QueueSource()
        self._sinks: dict[object, Sink] = {}
        self.ready = threading.Event()
        self.failed: str | None = None  # why the warm-up failed (the server then answers 503 and exits)
        self.on_failed: Callable[[], None] = lambda: None
        self.finished = 0  # requests the engine has given back (answered, failed or cancelled)
        self.cancelled = 0  # of which cancelled (their slots freed before their budget ran out)
        self._thread = threading.Thread(target=self._main, name="engine", daemon=True)

    @property
    def running(self) -> int:
        """Requests the engine has taken and not given back yet (a cancelled one counts until its slot is free)."""
        return self.source.taken - self.finished

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: EngineRequest, sink: Sink) -> bool:
        """Queues a prepared request; False once the loop is stopping."""
        self._sinks[request.tag] = sink
        if not self.source.put(request):
            self._sinks.pop(request.tag, None)
            return False
        return True

    def cancel(self, tag) -> None:
        if self._sinks.pop(tag, None) is not None:
            self.source.cancel(tag)

    def stop(self, timeout: float | None) -> bool:
        """Closes the queue and waits for the engine to finish what it holds; True if it did in time."""
        self.source.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- the engine thread ---------------------------------------------------------------------------------------
    def _main(self) -> None:
        t0 = time.perf_counter()
        try:
            self._warm_up()
        except Exception as e:  # noqa: BLE001 - reported by /health and the command's exit
            self.failed = f"{type(e).__name__}: {e}"
            log.error("engine warm-up failed: %s", self.failed)
            self.source.close()
            self.ready.set()
            self.on_failed()
            return
        self.ready.set()
        self._on_ready(time.perf_counter() - t0)
        while True:
            try:
                for tag, output in self.engine.run(self.source, return_logprobs=True, on_tokens=self._tokens):
                    self.finished += 1
                    self.cancelled += output.finish_reason == "cancelled"
                    sink = self._sinks.pop(tag, None)
                    if sink is not None:
                        sink(("done", output))
                return  # closed and drained
            except Exception as e:  # noqa: BLE001 - a bug must not take the server down with it
                log.error("engine error: %s", "".join(traceback.format_exception(e)))
                message = f"internal error in the engine ({type(e).__name__}); the request was not completed."
                for tag in list(self._sinks):
                    sink = self._sinks.pop(tag, None)
                    self.source.cancel(tag)
                    if sink is not None:
                        sink(("error", message))
                self.engine.reset()
                self.finished = self.source.taken
                if self.source.exhausted:
                    return

    def _tokens(self, tag, ids, logprobs, top) -> None:
        sink = self._sinks.get(tag)
        if sink is not None:
            sink(("tokens", ids, logprobs, top))
