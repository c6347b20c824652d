"""Continuous batching: B decode slots, each its own request at its own depth (docs/architecture.md, "Engine").

    engine = Engine(config, params, batch_size=8)
    for tag, output in engine.run(source):        # source: what is ready to prefill (jobs/pipeline.py)
        ...

The host loop: take ready requests for the free slots -> `prefill` them at bucketed shapes -> `insert` them
into the slots (the other slots keep their caches) -> `decode` many steps in one device call, which returns as
soon as a slot finishes while requests wait (or after `chunk` steps) -> emit each finished request at once and
free its slot. A request's output depends only on itself: its tokens, its own budget and sampling settings
(traced per-slot values), its own random stream.

Multi-host: process p owns slots [p*B/P, (p+1)*B/P) and its own requests; before each device call the
processes agree (one small all-gather) on the shapes, so every process runs the same programs in lockstep.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Iterable, Iterator
from typing import Protocol

import jax
import jax.numpy as jnp

from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.generation import layout, steps
from qwen_audio_jax.generation.options import GenerationOptions, RequestOptions
from qwen_audio_jax.model.params import build_module
from qwen_audio_jax.sharding.placement import Placement, agree_max, gather_processes
from qwen_audio_jax.text.processor import PreparedRequest

MAX_STOP_IDS = 8  # stop ids are padded to this many so their number never changes the compiled program
DECODE_CHUNK = 32  # decode steps per device call at most (the host's progress granularity)


@dataclasses.dataclass(frozen=True)
class EngineRequest:
    tag: object  # the caller's handle (a request id), returned with the output
    prepared: PreparedRequest
    options: RequestOptions


@dataclasses.dataclass
class GenerationOutput:
    token_ids: list[int]  # generated ids, the stop id included when one was produced
    finish_reason: str | None  # "stop" | "length" (None when the request failed)
    logprobs: list[float] | None = None  # model log-prob of each generated id (unprocessed logits)
    error: str | None = None  # why the device could not run this request (its own error line)


class RequestSource(Protocol):
    """What the engine pulls from: requests that are prepared (audio decoded, features, tokens)."""

    def take(self, n: int, block: bool) -> list[EngineRequest]:
        """Up to n ready requests; with block, wait until at least one is ready or the source is exhausted."""

    @property
    def exhausted(self) -> bool:
        """True once take() will never return anything again."""


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
    prefill_s: float = 0.0  # device time of prefill + insert (waited for)
    decode_s: float = 0.0
    input_wait_s: float = 0.0  # time the device sat idle waiting for prepared requests
    first_result_s: float | None = None  # from the first `run` call to the first finished request
    prefills: int = 0
    decode_calls: int = 0
    tokens: int = 0
    results: int = 0


@dataclasses.dataclass
class _Running:
    request: EngineRequest
    tokens: list[int]
    logprobs: list[float]


class Engine:
    """Jitted continuous-batching generation over `batch_size` slots on a placement (default: one device)."""

    def __init__(
        self,
        config: ModelConfig,
        params,
        *,
        dtype=jnp.float32,
        batch_size: int = 8,
        placement: Placement | None = None,
        buckets: Buckets = Buckets(),
        attention: str = "auto",
        return_logprobs: bool = False,
        stop_ids: tuple[int, ...] = (),
        chunk: int = DECODE_CHUNK,
    ):
        self.config, self.buckets, self.chunk = config, buckets, chunk
        self.placement = placement or Placement.create(None)
        self.batch_size = self.placement.round_batch(batch_size)
        self.return_logprobs = return_logprobs
        self.module = build_module(config, dtype=dtype, attention=attention)
        self.dtype = dtype
        self.params = jax.device_put(params, self.placement.param_shardings(config))  # a no-op if already there
        self.stop_ids = tuple(dict.fromkeys(config.stop_ids + tuple(stop_ids)))[:MAX_STOP_IDS]
        padded = list(self.stop_ids) + [self.stop_ids[0]] * (MAX_STOP_IDS - len(self.stop_ids))
        self._stop = steps.StopCriteria(jnp.asarray(padded, jnp.int32), jnp.asarray(config.pad_token_id, jnp.int32))
        # Explicit output shardings keep the slot state in one layout across insert, decode and grow, so each
        # program is reused and every donation lands.
        state_sh = layout.state_shardings(self.placement, config.decoder, self.batch_size)
        rows2, rep = self.placement.batch_sharding(2), self.placement.replicated()
        self._prefill = jax.jit(
            functools.partial(steps.prefill, self.module.clone(return_kv=True)),
            static_argnames=("with_logprobs",),
            out_shardings=layout.prefilled_shardings(state_sh),
        )
        # (Each engine jits its own partials: its program counts are then its own.)
        self._insert = jax.jit(functools.partial(steps.insert), donate_argnums=(0,), out_shardings=state_sh)
        self._decode = jax.jit(
            functools.partial(steps.decode, self.module),
            static_argnames=("chunk", "with_logprobs"),
            donate_argnums=(1,),
            out_shardings=(state_sh, rows2, rows2, rep),
        )
        self._grow = jax.jit(functools.partial(steps.grow), static_argnums=(1,), out_shardings=state_sh)
        self._init = jax.jit(
            functools.partial(steps.empty_state, config.decoder, self.batch_size, dtype=dtype),
            static_argnums=(0,),
            out_shardings=state_sh,
        )
        self._state: steps.SlotState | None = None
        self.stats = EngineStats()
        self._started: float | None = None
        # The static shapes met so far, per program: ("prefill", rows, length, clips, frames),
        # ("insert", rows, length, cache), ("decode", cache). Bounded by the bucket grid.
        self.shapes_seen: set[tuple] = set()

    # ---- public ----------------------------------------------------------------------------------------------
    def compiled_programs(self) -> dict[str, int]:
        return {
            name: fn._cache_size()
            for name, fn in (
                ("prefill", self._prefill),
                ("insert", self._insert),
                ("decode", self._decode),
                ("grow", self._grow),
                ("init", self._init),
            )
        }

    def program_bound(self, frames: int | None = None) -> int:
        """The most programs a job can compile: prefill over rows x lengths x (no audio + clips x frames),
        insert over rows x lengths x cache lengths, decode and grow over cache lengths, one state init."""
        b = self.buckets
        rows = b.row_options(self._row_divisor, self.batch_size)
        frames = len(b.frames) if frames is None else frames
        n_len = len(b.lengths)
        return rows * n_len * (1 + len(b.clips) * frames) + rows * n_len * n_len + 3 * n_len

    @property
    def _row_divisor(self) -> int:
        """Prefill rows come in multiples of this: they split over the batch axes and over processes."""
        return math.lcm(self.placement.batch_divisor, jax.process_count())

    def cache_length(self) -> int:
        return 0 if self._state is None else int(self._state.cache.k.shape[3])

    def generate(self, prepared: list[PreparedRequest], options: GenerationOptions) -> list[GenerationOutput]:
        """Convenience: generate for a list (outputs in input order), every request with the job's options."""
        reqs = [EngineRequest(i, p, options.for_request(None, str(i))) for i, p in enumerate(prepared)]
        out = dict(self.run(ListSource(reqs), return_logprobs=options.return_logprobs))
        return [out[i] for i in range(len(prepared))]

    def run(
        self, source: RequestSource, return_logprobs: bool | None = None
    ) -> Iterator[tuple[object, GenerationOutput]]:
        """Generates until the source is exhausted and every slot is done; yields (tag, output) as each request
        finishes. return_logprobs (static: its own programs) replaces the engine's setting when given. Multi-host: every
        process calls this with its own source."""
        if return_logprobs is not None:
            self.return_logprobs = return_logprobs
        procs, me = jax.process_count(), jax.process_index()
        local = self.batch_size // procs
        free = collections.deque(range(me * local, (me + 1) * local))
        running: dict[int, _Running] = {}
        waiting: collections.deque[EngineRequest] = collections.deque()  # taken from the source, not yet admitted
        self._started = self._started or time.perf_counter()
        with self.placement.activate():
            while True:
                t0 = time.perf_counter()
                block = not running and not waiting and not source.exhausted  # the device idles until input
                if len(free) > len(waiting):
                    waiting.extend(source.take(len(free) - len(waiting), block=block))
                if block:
                    self.stats.input_wait_s += time.perf_counter() - t0
                new = self._select(waiting, len(free))
                more = bool(waiting) or not source.exhausted
                agreed = agree_max(self._local_sizes(new, running, more))
                n_new, any_running, any_more = agreed[0], agreed[5], agreed[6]
                if not (n_new or any_running or any_more):
                    return
                if n_new:
                    yield from self._admit(new, free, running, agreed)
                if n_new or any_running:  # decided on agreed values: every process calls decode together
                    yield from self._decode_chunk(free, running, stop_on_free=bool(any_more))

    # ---- host loop pieces ------------------------------------------------------------------------------------
    def _select(self, waiting: collections.deque, free: int) -> list[EngineRequest]:
        """The next requests to prefill together: in arrival order, as many as there are free slots and as
        their clips fit the largest clip bucket (at least one)."""
        out, clips = [], 0
        while waiting and len(out) < free:
            n = len(waiting[0].prepared.mels)
            if out and clips + n > self.buckets.clips[-1]:
                break
            out.append(waiting.popleft())
            clips += n
        return out

    def _local_sizes(self, new: list[EngineRequest], running: dict, more: bool) -> tuple[int, ...]:
        """This process's needs: (new rows, length bucket, clips, frame bucket, cache length, running, more)."""
        t_len = clips = frames = 0
        cache_len = self.cache_length()
        for r in new:
            n = r.prepared.num_tokens
            t_len = max(t_len, self.buckets.prompt_length(n))
            cache_len = max(cache_len, n + r.options.max_new_tokens)
        if new:
            batch_clips = sum(len(r.prepared.mels) for r in new)
            clips = self.buckets.num_clips(batch_clips)
            lengths = [length for r in new for length in r.prepared.mel_lengths]
            frames = self.buckets.mel_frames(max(lengths)) if lengths else 0
            cache_len = max(cache_len, t_len)
        cache_len = self.buckets.prompt_length(cache_len) if cache_len else 0
        return len(new), t_len, clips, frames, cache_len, int(bool(running)), int(more)

    def _ensure_state(self, cache_len: int) -> None:
        if self._state is None:
            self._state = self._init(cache_len)
        elif cache_len > self.cache_length():
            self._state = self._grow(self._state, cache_len)

    def _admit(self, new: list[EngineRequest], free: collections.deque, running: dict, agreed) -> Iterator:
        """Prefill + insert the new requests into free slots (shapes agreed over processes)."""
        n_new, t_len, clips, frames, cache_len = agreed[:5]
        procs = jax.process_count()
        rows = self.buckets.rows(n_new * procs, self._row_divisor, self.batch_size)
        local_rows = rows // procs
        self._ensure_state(cache_len)
        self.shapes_seen.add(("prefill", rows, t_len, clips, frames))
        self.shapes_seen.add(("insert", rows, t_len, self.cache_length()))
        slots = [free.popleft() for _ in new]
        arrays = layout.prefill_arrays(
            new, slots, local_rows, (t_len, clips, frames), self.config, self.buckets, self.batch_size
        )
        arrays = jax.tree_util.tree_map(gather_processes, arrays)  # multi-host: rows (and clips) in process order
        t0 = time.perf_counter()
        try:
            pre = self._run_prefill(arrays)
            jax.block_until_ready(pre.first_token)  # an execution error surfaces here, inside the try
        except Exception as e:  # noqa: BLE001 - a device failure on these requests must not end the job
            free.extendleft(reversed(slots))
            yield from self._isolate_failure(new, free, running, e)
            return
        put = self.placement.put
        self._state = self._insert(self._state, pre, put(arrays["slots"]))
        first, first_lp, done = self.placement.to_host((pre.first_token, pre.first_logprob, pre.done))
        self.stats.prefill_s += time.perf_counter() - t0
        self.stats.prefills += 1
        offset = jax.process_index() * local_rows  # this process's rows in the gathered batch
        for i, (req, slot) in enumerate(zip(new, slots)):
            running[slot] = _Running(req, [int(first[offset + i])], [float(first_lp[offset + i])])
            self.stats.tokens += 1
            if done[offset + i]:
                yield self._finish(slot, free, running)

    def _run_prefill(self, arrays: dict) -> steps.Prefilled:
        put = self.placement.put
        return self._prefill(
            self.params,
            put(arrays["tokens"]),
            put(arrays["lengths"]),
            put(arrays["mel"]),
            put(arrays["mel_lengths"]),
            put(arrays["rope_index"]),
            put(arrays["keys"]),
            jax.tree_util.tree_map(put, arrays["sampling"]),
            put(arrays["max_new"]),
            self._stop,
            with_logprobs=self.return_logprobs,
        )

    def _isolate_failure(self, new, free, running, exc: Exception) -> Iterator:
        """A prefill that failed: alone (one process), each request is tried by itself, so only the one that
        cannot run gets an error; on several processes (one collective program) every request of the group does."""
        message = f"generation failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        if jax.process_count() == 1 and len(new) > 1:
            for req in new:
                yield from self._admit([req], free, running, agree_max(self._local_sizes([req], running, False)))
            return
        for req in new:
            self.stats.results += 1
            yield req.tag, GenerationOutput([], None, None, error=message)

    def _decode_chunk(self, free: collections.deque, running: dict, stop_on_free: bool) -> Iterator:
        self.shapes_seen.add(("decode", self.cache_length()))
        t0 = time.perf_counter()
        self._state, tokens, logprobs, n = self._decode(
            self.params,
            self._state,
            self._stop,
            jnp.asarray(stop_on_free),
            chunk=self.chunk,
            with_logprobs=self.return_logprobs,
        )
        tokens, logprobs, done, n = self.placement.to_host((tokens, logprobs, self._state.done, n))
        self.stats.decode_s += time.perf_counter() - t0
        self.stats.decode_calls += 1
        for slot, run in list(running.items()):
            got = tokens[slot, : int(n)]
            keep = got != steps.NO_TOKEN
            run.tokens += got[keep].tolist()
            run.logprobs += logprobs[slot, : int(n)][keep].tolist()
            self.stats.tokens += int(keep.sum())
            if done[slot]:
                yield self._finish(slot, free, running)

    def _finish(self, slot: int, free: collections.deque, running: dict) -> tuple[object, GenerationOutput]:
        run = running.pop(slot)
        free.append(slot)
        self.stats.results += 1
        if self.stats.first_result_s is None:
            self.stats.first_result_s = time.perf_counter() - self._started
        ids = run.tokens[: run.request.options.max_new_tokens]
        reason = "stop" if ids and ids[-1] in self.stop_ids else "length"
        return run.request.tag, GenerationOutput(
            ids, reason, run.logprobs[: len(ids)] if self.return_logprobs else None
        )
