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
import numpy as np

from qwen_audio_jax.batching.buckets import Buckets, to_buckets
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.generation import steps
from qwen_audio_jax.generation.options import GenerationOptions, RequestOptions
from qwen_audio_jax.generation.sampling import SamplingParams
from qwen_audio_jax.model import axes, rope
from qwen_audio_jax.model.params import build_module
from qwen_audio_jax.sharding.placement import Placement, agree_max, gather_processes
from qwen_audio_jax.text.processor import PreparedRequest, collate

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
    finish_reason: str  # "stop" | "length"
    logprobs: list[float] | None = None  # model log-prob of each generated id (unprocessed logits)


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
        state_sh = self._state_shardings()
        rows2, rep = self.placement.batch_sharding(2), self.placement.replicated()
        self._prefill = jax.jit(
            functools.partial(steps.prefill, self.module.clone(return_kv=True)),
            static_argnames=("with_logprobs",),
            out_shardings=self._prefilled_shardings(state_sh),
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

    def _state_shardings(self) -> steps.SlotState:
        """Slots split over the batch axes; the cache by its logical axes (the cache length is never split,
        so one sharding serves every cache length)."""
        d = self.config.decoder
        shape = (d.num_layers, self.batch_size, d.num_kv_heads, 1, d.head_dim)
        cache = self.placement.logical_sharding(axes.CACHE_AXES, shape)
        rows = self.placement.batch_sharding(1)
        rows2 = self.placement.batch_sharding(2)
        sampling = SamplingParams(rows, rows, rows, rows, rows)
        return steps.SlotState(
            cache=steps.KVCache(cache, cache),
            lengths=rows,
            rope_index=rows,
            last_token=rows,
            num_generated=rows,
            max_new=rows,
            done=rows,
            seen=rows2,
            keys=rows2,
            sampling=sampling,
        )

    def _prefilled_shardings(self, state_sh: steps.SlotState) -> steps.Prefilled:
        """Prefill's outputs laid out like the slots (rows over the batch axes), so insert sees one layout."""
        rows, rows2 = state_sh.lengths, state_sh.seen
        return steps.Prefilled(
            k=state_sh.cache.k,
            v=state_sh.cache.v,
            lengths=rows,
            rope_index=rows,
            first_token=rows,
            first_logprob=rows,
            done=rows,
            seen=rows2,
            keys=rows2,
            max_new=rows,
            sampling=state_sh.sampling,
        )

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
        arrays = self._prefill_arrays(new, slots, local_rows, t_len, clips, frames)
        arrays = jax.tree_util.tree_map(gather_processes, arrays)  # multi-host: rows (and clips) in process order
        t0 = time.perf_counter()
        put = self.placement.put
        pre = self._prefill(
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

    def _prefill_arrays(self, new, slots, rows: int, t_len: int, clips: int, frames: int) -> dict:
        """Host arrays of this process's `rows` prefill rows (right-padded; padding rows target slot B)."""
        pad = self.config.pad_token_id
        n_mels = self.config.audio.num_mel_bins
        inputs = collate([r.prepared for r in new], pad_id=pad, padding_side="right") if new else None
        batch = to_buckets(
            inputs, self.buckets, rows, pad, sizes=(t_len, clips, frames), n_mels=n_mels, padding_side="right"
        )
        lengths = np.zeros(rows, np.int32)
        lengths[: len(new)] = [r.prepared.num_tokens for r in new]
        keys = np.zeros((rows, 2), np.uint32)
        for i, r in enumerate(new):  # raw uint32[2] keys: each request's own stream (its seed and id)
            keys[i] = np.asarray(jax.random.fold_in(jax.random.PRNGKey(r.options.seed), r.options.stream))
        settings = [r.options.sampling_row for r in new] + [(0.0, 0, 1.0, 1.0, 0)] * (rows - len(new))
        max_new = np.ones(rows, np.int32)
        max_new[: len(new)] = [r.options.max_new_tokens for r in new]
        slot_ids = np.full(rows, self.batch_size, np.int32)  # out of range: the insert drops padding rows
        slot_ids[: len(new)] = slots
        rope_index = np.zeros(rows, np.int32)
        rope_index[: len(new)] = [rope.ntk_index(r.prepared.num_tokens, self.config.decoder) for r in new]
        return {
            "tokens": batch.tokens,
            "lengths": lengths,
            "mel": batch.mel,
            "mel_lengths": batch.mel_lengths,
            "rope_index": rope_index,
            "keys": keys,
            "sampling": SamplingParams.rows(settings),
            "max_new": max_new,
            "slots": slot_ids,
        }

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
