"""What the engine takes and gives: its sizing (`EngineOptions`), a request (`EngineRequest`), where requests come
from (`RequestSource`), an output (`GenerationOutput`), the per-chunk token hook and the engine's counters.

Two optional hooks serve callers that answer while a request runs (the HTTP server, serving/):

* `on_tokens(tag, ids, logprobs, top)`, passed to `Engine.run`: called on the engine's thread after every prefill
  call (a request's first token) and every decode chunk (up to DECODE_CHUNK tokens), with the tokens each running
  request gained in that call; `top` is None, or, for a request whose options ask for `top_logprobs`, each
  token's most likely alternatives [(id, log-prob)] (computed in the same programs, only in rounds that need
  them). The finished request's `GenerationOutput` still comes from `run` as before; its `token_ids` are the
  concatenation of what the hook was given.
* `RequestSource.cancelled()`, if the source defines it: the tags of requests to drop, polled once a round. A
  request still waiting or being prefilled is dropped at once; a decoding one stops at the next decode call, which
  marks its slot done on the device before any step; then its slot and pages are free and `run` yields it with
  `finish_reason="cancelled"` and the tokens it had. One process only (the server); batch jobs never cancel.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable
from typing import Protocol

from qwen_audio_jax.choices import DEFAULT_BATCH_SIZE, DEFAULT_KV_CACHE_DTYPE
from qwen_audio_jax.generation.options import RequestOptions
from qwen_audio_jax.text.batch import PreparedRequest

TokenHook = Callable[[object, list, list, list | None], None]  # on_tokens(tag, new ids, their log-probs, top)


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How a job's engine is sized: the one home of these choices and their defaults (the CLI flags of
    generate / eval / serve map onto it)."""

    batch_size: int = DEFAULT_BATCH_SIZE  # decode slots (rounded up to the mesh's batch axes and process count)
    max_len: int | None = None  # prompt + budget of one request (default and ceiling: the model's context)
    kv_cache_tokens: int | None = None  # the page pool over all slots (default TOKENS_PER_SLOT per slot)
    kv_cache_dtype: str = DEFAULT_KV_CACHE_DTYPE  # choices.KV_CACHE_DTYPES: "auto" (the compute dtype) | "int8"
    precompile: bool = False  # compile the whole program set before the first request

    def engine_kwargs(self) -> dict:
        return dict(
            batch_size=self.batch_size,
            max_len=self.max_len,
            kv_cache_tokens=self.kv_cache_tokens,
            kv_cache_dtype=self.kv_cache_dtype,
        )


@dataclasses.dataclass(frozen=True)
class EngineRequest:
    tag: object  # the caller's handle (a request id), returned with the output
    prepared: PreparedRequest
    options: RequestOptions


@dataclasses.dataclass
class GenerationOutput:
    token_ids: list[int]  # generated ids, the stop id included when one was produced
    finish_reason: str | None  # "stop" | "length" | "cancelled" (None when the request failed)
    logprobs: list[float] | None = None  # model log-prob of each generated id (unprocessed logits)
    error: str | None = None  # why the device could not run this request (its own error line)
    top_logprobs: list | None = None  # per id, its step's most likely [(id, log-prob)], if the request asked


def alternatives(ids, logprobs, k: int) -> list[tuple[int, float]]:
    """One step's k most likely (id, log-prob), most likely first (from the device's top log-probs)."""
    return [(int(i), float(lp)) for i, lp in zip(ids[:k], logprobs[:k])]


class RequestSource(Protocol):
    """What the engine pulls from: requests that are prepared (audio decoded, features, tokens)."""

    def take(self, n: int, block: bool) -> list[EngineRequest]:
        """Up to n ready requests; with block, wait until at least one is ready or the source is exhausted."""

    @property
    def exhausted(self) -> bool:
        """True once take() will never return anything again."""

    # Optional (module docstring): def cancelled(self) -> Iterable[object]: tags to drop, polled once a round.


class ListSource:
    """An in-memory source (tests, the Python API)."""

    def __init__(self, requests: Iterable[EngineRequest]):
        self._queue = collections.deque(requests)

    def take(self, n: int, block: bool) -> list[EngineRequest]:
        return [self._queue.popleft() for _ in range(min(n, len(self._queue)))]

    @property
    def exhausted(self) -> bool:
        return not self._queue


@dataclasses.dataclass
class EngineStats:
    prefill_s: float = 0.0  # device time of encode + prefill calls (waited for)
    decode_s: float = 0.0
    input_wait_s: float = 0.0  # time the device sat idle waiting for prepared requests
    first_result_s: float | None = None  # from the first `run` call to the first finished request
    prefills: int = 0  # prefill calls
    encodes: int = 0  # encode calls
    decode_calls: int = 0
    decode_steps: int = 0
    tokens: int = 0
    results: int = 0
