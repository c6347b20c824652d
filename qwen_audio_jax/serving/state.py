"""What every endpoint shares: the model, the engine loop, the limits, the worker pool that prepares requests, and
the life of one engine request on the HTTP side (`Generation`: enqueue, events, deltas, cancel on the way out).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as futures
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable

from qwen_audio_jax.errors import QwenAudioError
from qwen_audio_jax.generation.engine import EngineRequest, GenerationOutput
from qwen_audio_jax.serving.engine_loop import EngineLoop
from qwen_audio_jax.serving.errors import APIError, from_user_error
from qwen_audio_jax.serving.media import MediaPolicy
from qwen_audio_jax.serving.metrics import Metrics
from qwen_audio_jax.serving.text_stream import TextStream


@dataclasses.dataclass
class ServerState:
    model: object  # api.LoadedModel
    loop: EngineLoop
    metrics: Metrics
    policy: MediaPolicy
    pool: futures.ThreadPoolExecutor
    served_name: str
    api_key: str | None = None
    max_queue: int = 256
    max_body_bytes: int = 64 * 2**20
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    draining: Callable[[], bool] = lambda: False
    admitted: int = 0  # requests accepted and not answered yet

    @property
    def engine(self):
        return self.loop.engine

    def check_model(self, name) -> None:
        if name != self.served_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.served_name!r}.",
                param="model",
                code="model_not_found",
            )

    def check_open(self) -> None:
        """503 while warming up or draining, or when the queue is full."""
        if self.loop.failed is not None:
            raise APIError(503, f"the engine failed to start ({self.loop.failed}).", code="engine_failed")
        if not self.loop.ready.is_set():
            raise APIError(
                503, "the server is still compiling its programs; retry when /health answers 200.", code="not_ready"
            )
        if self.draining():
            raise APIError(503, "the server is shutting down.", code="shutting_down")
        if self.admitted >= self.max_queue + self.engine.batch_size:
            raise APIError(
                503, f"the server is at capacity ({self.admitted} requests in flight); retry later.", code="queue_full"
            )

    async def prepare(self, fn: Callable[[], object]):
        """Runs fn (audio decoding, features, tokens) on a worker thread; a user error is a 400."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn)
        except QwenAudioError as e:
            raise from_user_error(e) from None


@dataclasses.dataclass
class Finish:
    reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    token_ids: list


class Generation:
    """One prepared request through the engine, as an async stream of (text delta, logprob entries) and a Finish.

    Leaving the iteration early (a client that went away, a cancelled task) cancels the engine request, so its slot
    frees at the engine's next round."""

    def __init__(self, state: ServerState, request: EngineRequest, stream: TextStream, arrived: float):
        self.state, self.request, self.text, self.arrived = state, request, stream, arrived
        self.finish: Finish | None = None
        self.tag = request.tag

    async def events(self) -> AsyncIterator[tuple[str, list]]:
        state, metrics = self.state, self.state.metrics
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        if not state.loop.submit(self.request, lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev)):
            raise APIError(503, "the server is shutting down.", code="shutting_down")
        prompt = self.request.prepared.num_tokens
        metrics.prompt_tokens.inc(prompt)
        queued, last, count = time.perf_counter(), None, 0
        try:
            while True:
                event = await queue.get()
                if event[0] == "error":
                    raise APIError(500, event[1], code="engine_error")
                now = time.perf_counter()
                if event[0] == "tokens":
                    _, ids, logprobs, top = event
                    count += len(ids)
                    metrics.generation_tokens.inc(len(ids))
                    if last is None:
                        metrics.ttft.observe(now - queued)
                    else:
                        for _ in ids:
                            metrics.itl.observe((now - last) / len(ids))
                    last = now
                    delta = self.text.push(ids)
                    entries = self.text.logprob_entries(ids, logprobs, top)
                    if delta or entries:
                        yield delta, entries
                    if self.text.stopped:  # a stop string: the text is final, the engine request is dropped
                        state.loop.cancel(self.tag)
                        self.finish = Finish("stop", prompt, count, self.text.ids)
                        break
                    continue
                out: GenerationOutput = event[1]
                if out.error is not None:
                    raise APIError(500, out.error, code="engine_error")
                delta = self.text.finish(out.token_ids)
                if delta:
                    yield delta, []
                reason = "stop" if self.text.stopped and out.finish_reason == "length" else out.finish_reason
                self.finish = Finish(reason, prompt, len(out.token_ids), out.token_ids)
                break
            metrics.e2e.observe(time.perf_counter() - self.arrived)
        finally:
            if self.finish is None:
                state.loop.cancel(self.tag)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
