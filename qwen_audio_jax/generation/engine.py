"""Continuous batching over B decode slots with a paged KV cache, from a fixed set of compiled programs
(docs/architecture.md, "Engine").

    engine = Engine(config, params, batch_size=8)
    engine.precompile()                            # optional: every program now, with a progress bar
    for tag, output in engine.run(source):         # source: what is ready to prefill (jobs/pipeline.py)
        ...

Types and the optional streaming / cancellation hooks (the server's): generation/requests.py.

The host loop: admit ready requests in input order (a slot and the pages for prompt + budget) -> encode their
clips into the feature buffer -> prefill their prompts chunk by chunk into the pages -> decode many steps in
one device call, which returns as soon as a slot finishes while requests wait -> emit each finished request
at once and free its slot and pages. A request's output depends only on itself: its tokens, its own budget and
sampling settings (traced per-slot values), its own random stream.

The programs: `init`, `encode` per mel-frame bucket, `prefill` per chunk-length bucket, `extend` (later chunks
of long prompts), `decode`: at most `program_bound()`, whatever the corpus (tests/test_program_set.py).

Multi-host: process p owns page domains [p*D/P, (p+1)*D/P) with their slots and its own requests; before each
device call the processes agree on the shapes (batching/device_batch.py), so all run the same programs.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.batching.device_batch import DeviceBatch, error_message, run_isolated
from qwen_audio_jax.choices import DEFAULT_ATTENTION, DEFAULT_BATCH_SIZE, DEFAULT_KV_CACHE_DTYPE, KV_CACHE_DTYPES
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.generation import layout, steps
from qwen_audio_jax.generation.options import GenerationOptions, RequestOptions
from qwen_audio_jax.generation.programs import ProgramSet
from qwen_audio_jax.generation.requests import (  # noqa: F401 - re-exported: callers import them from here
    EngineOptions,
    EngineRequest,
    EngineStats,
    GenerationOutput,
    ListSource,
    RequestSource,
    TokenHook,
    alternatives,
)
from qwen_audio_jax.generation.scheduler import CacheGeometry, ChunkPlan, Scheduler
from qwen_audio_jax.model.attention import chosen
from qwen_audio_jax.model.params import build_module
from qwen_audio_jax.sharding.placement import Placement
from qwen_audio_jax.text.processor import PreparedRequest

MAX_STOP_IDS = 8  # stop ids are padded to this many so their number never changes the compiled program
DECODE_CHUNK = 32  # decode steps per device call at most (the host's progress granularity)
PAGE_SIZE = 128  # tokens per KV page
TOKENS_PER_SLOT = 2048  # default pool size per slot (--kv-cache-tokens overrides)


# What every process agrees on (DeviceBatch.agree) before a device call; flags come back as 0 or 1.
class RoundFlags(NamedTuple):
    prefill: int  # some process has a chunk to prefill
    live: int  # some process has requests decoding
    pending: int  # some process has requests still to admit or read
    top: int  # some process runs a request that asks for top log-probs (the device computes them this round)


class EncodeCalls(NamedTuple):
    calls: int  # encoder calls this round: the most clips any domain's prompt still has to encode


class PrefillShape(NamedTuple):
    length: int  # the chunk-length bucket of the longest chunk
    extend: int  # some chunk continues a prompt (prefill at the longest chunk, over cached pages)


@dataclasses.dataclass
class _Output:
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top: list[list[tuple[int, float]]] | None = None  # per token, when the request asks for top log-probs


class Engine:
    """Jitted continuous-batching generation over `batch_size` slots on a placement (default: one device).

    max_len: prompt + budget of one request at most (default and ceiling: the model's context); kv_cache_tokens:
    the page pool's size over all slots (default TOKENS_PER_SLOT per slot, at least max_len per domain);
    kv_cache_dtype "int8" stores keys/values in int8 with per-token, per-head scales; quantized: `params` is the
    int8 tree of model/quant.py."""

    def __init__(
        self,
        config: ModelConfig,
        params,
        *,
        dtype=jnp.float32,
        batch_size: int = DEFAULT_BATCH_SIZE,
        placement: Placement | None = None,
        buckets: Buckets = Buckets(),
        attention: str = DEFAULT_ATTENTION,
        return_logprobs: bool = False,
        stop_ids: tuple[int, ...] = (),
        chunk: int = DECODE_CHUNK,
        max_len: int | None = None,
        kv_cache_tokens: int | None = None,
        page_size: int = PAGE_SIZE,
        kv_cache_dtype: str = DEFAULT_KV_CACHE_DTYPE,
        quantized: bool = False,
    ):
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")
        self.config, self.buckets, self.chunk, self.dtype = config, buckets, chunk, dtype
        self.placement = placement or Placement.create(None)
        self.batch = DeviceBatch(self.placement)
        self.domains = math.lcm(self.placement.batch_divisor, jax.process_count())
        self.batch_size = self.placement.round_batch(batch_size)
        self.return_logprobs = return_logprobs
        self.quantized, self.kv_int8 = quantized, kv_cache_dtype == "int8"
        limit = config.decoder.max_position_embeddings
        self.max_len = min(max_len or limit, limit)
        self.geometry = CacheGeometry.plan(
            self.batch_size,
            self.domains,
            self.max_len,
            page_size,
            kv_cache_tokens,
            TOKENS_PER_SLOT,
            max_clip_rows=(config.audio.max_mel_frames // 4) + 2,
        )
        self.stop_ids = tuple(dict.fromkeys(config.stop_ids + tuple(stop_ids)))[:MAX_STOP_IDS]
        padded = list(self.stop_ids) + [self.stop_ids[0]] * (MAX_STOP_IDS - len(self.stop_ids))
        self._stop = steps.StopCriteria(jnp.asarray(padded, jnp.int32), jnp.asarray(config.pad_token_id, jnp.int32))
        self.module = build_module(config, dtype=dtype, attention=attention, quantized=quantized)
        self.params = jax.device_put(params, self.placement.param_shardings(config, quantized))
        self.programs = ProgramSet(
            self.module, self.params, self.placement, config, self.geometry, dtype, self.kv_int8, buckets, self._stop
        )
        self._state: steps.SlotState | None = None
        self._features: jax.Array | None = None
        self.stats = EngineStats()
        self._started: float | None = None
        self._on_tokens: TokenHook | None = None
        self._cancel: set[int] = set()
        self._want_top = False  # this round's device calls compute top log-probs

    # ---- public ----------------------------------------------------------------------------------------------
    def compiled_programs(self) -> dict[str, int]:
        """Programs compiled so far, per family (jit cache sizes)."""
        return self.programs.compiled()

    def program_bound(self) -> int:
        """The most programs any job on this engine compiles: init + encode per frame bucket + prefill per chunk
        bucket + extend + decode."""
        return self.programs.bound()

    def precompile(self, progress: bool = True) -> int:
        """Compiles the whole program set now (a progress bar per program); returns how many were compiled."""
        n, self._state, self._features = self.programs.precompile(progress, self.chunk)
        return n

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the page pool (all domains)."""
        return self.programs.kv_cache_bytes()

    @property
    def weights_bytes(self) -> int:
        """Bytes of the params as the engine holds them (int8 kernels count one byte per weight)."""
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(self.params))

    def attention_paths(self) -> dict[str, str]:
        """The attention implementation each kind of call runs (model/attention.py: chosen per call)."""
        impl = self.module.attention

        def q(heads, head_dim):
            return jax.ShapeDtypeStruct((1, 1, heads, head_dim), jnp.dtype(self.dtype))

        a, d = self.config.audio, self.config.decoder
        return {
            "encoder": chosen(impl, q(a.num_heads, a.head_dim)),
            "prefill": chosen(impl, q(d.num_heads, d.head_dim)),
            "decode": "paged",
        }

    def generate(self, prepared: list[PreparedRequest], options: GenerationOptions) -> list[GenerationOutput]:
        """Convenience: generate for a list (outputs in input order), every request with the job's options."""
        reqs = [EngineRequest(i, p, options.for_request(None, str(i))) for i, p in enumerate(prepared)]
        out = dict(self.run(ListSource(reqs), return_logprobs=options.return_logprobs))
        return [out[i] for i in range(len(prepared))]

    def reset(self) -> None:
        """Forgets every slot (after a `run` that raised): the next `run` starts from a fresh slot state."""
        self._state, self._cancel = None, set()

    def check_request(self, prepared: PreparedRequest, options: RequestOptions) -> str | None:
        """Why the engine cannot run this request (None if it can): prompt + budget over max_len."""
        need = prepared.num_tokens + options.max_new_tokens
        if need > self.max_len:
            return (
                f"the prompt has {prepared.num_tokens} tokens; with max_new_tokens={options.max_new_tokens} that "
                f"exceeds the {self.max_len}-token limit of this run. Shorten the prompt or the audio, lower "
                "max_new_tokens, or raise --max-len (at most the model's context)."
            )
        return None

    def run(
        self, source: RequestSource, return_logprobs: bool | None = None, on_tokens: TokenHook | None = None
    ) -> Iterator[tuple[object, GenerationOutput]]:
        """Generates until the source is exhausted and every slot is done; yields (tag, output) as each request
        finishes. `on_tokens` and a source's `cancelled()`: generation/requests.py. Multi-host: every process calls
        this with its own source (and none cancels)."""
        if return_logprobs is not None:
            self.return_logprobs = return_logprobs
        self._on_tokens = on_tokens
        me, procs = self.batch.process
        per = self.domains // procs
        sched = Scheduler(self.geometry, me * per, per, self.config.audio_token_id)
        outputs: dict[int, _Output] = {}
        waiting: collections.deque[EngineRequest] = collections.deque()
        self._cancel: set[int] = set()  # decoding slots to stop at the next decode call
        cancelled = getattr(source, "cancelled", None)
        self._started = self._started or time.perf_counter()
        with self.placement.activate():
            self._ensure_state()
            while True:
                if cancelled is not None:
                    yield from self._drop(set(cancelled()), sched, outputs, waiting)
                block = not sched.running and not waiting and not source.exhausted
                want = sched.free_slot_count() - len(waiting)
                if want > 0:
                    t0 = time.perf_counter()
                    waiting.extend(source.take(want, block=block))
                    if block:
                        self.stats.input_wait_s += time.perf_counter() - t0
                while waiting and sched.admit(waiting[0], self._tokens_needed(waiting[0])) is not None:
                    waiting.popleft()
                more = bool(waiting) or not source.exhausted
                top = any(adm.request.options.top_logprobs for adm in sched.running.values())
                flags = self.batch.agree(RoundFlags(sched.has_prefill(), bool(outputs), more, top))
                self._want_top = bool(flags.top)
                if flags.prefill:
                    yield from self._prefill_round(sched, outputs, sched.domains)
                elif flags.live:
                    yield from self._decode_chunk(sched, outputs, stop_on_free=bool(flags.pending))
                elif not flags.pending:
                    return

    # ---- host loop pieces ------------------------------------------------------------------------------------
    def _drop(self, tags: set, sched: Scheduler, outputs: dict, waiting: collections.deque) -> Iterator:
        """Cancelled requests: a waiting or prefilling one goes at once (its slot is not live on the device); a
        decoding one is marked for the next decode call, which stops it before any step."""
        if not tags:
            return
        for req in [r for r in waiting if r.tag in tags]:
            waiting.remove(req)
            yield req.tag, GenerationOutput([], "cancelled")
        for slot, adm in list(sched.running.items()):
            if adm.request.tag not in tags:
                continue
            if slot in outputs:
                self._cancel.add(slot)
            else:
                sched.release(slot)
                yield adm.request.tag, GenerationOutput([], "cancelled")

    # ---- host loop pieces ------------------------------------------------------------------------------------
    def _tokens_needed(self, req: EngineRequest) -> int:
        return req.prepared.num_tokens + req.options.max_new_tokens

    def _ensure_state(self) -> None:
        if self._state is None or self._state.lengths.is_deleted():
            self._state, self._features = self.programs.init()

    def _prefill_round(self, sched: Scheduler, outputs: dict, domains: list[int]) -> Iterator:
        """Encodes the clips of each domain's current prompt (if not yet done) and prefills its next chunk; a
        device failure is retried on fewer domains, so only a request that fails alone gets its error."""
        working = [d for d in domains if sched.current(d) is not None]
        finished: list = []

        def run(ds):
            finished.extend(self._prefill_call(sched, outputs, ds))
            return [None] * len(ds)

        def fail(d, exc):
            adm = sched.current(d)
            if adm is not None:
                sched.release(adm.slot)
                outputs.pop(adm.slot, None)
                self.stats.results += 1
                finished.append((adm.request.tag, GenerationOutput([], None, None, error=error_message(exc))))
            self._ensure_state()  # a failed call may have consumed the donated state

        run_isolated(working, run, fail)
        yield from finished

    def _prefill_call(self, sched: Scheduler, outputs: dict, domains: list[int]) -> list:
        chosen = set(domains)
        t0 = time.perf_counter()
        clips = {d: c for d, c in sched.clips_to_encode().items() if d in chosen}
        calls = self.batch.agree(EncodeCalls(max((len(c) for c in clips.values()), default=0))).calls
        if calls:
            frames = self.batch.agree(
                [
                    max((self.buckets.inference_mel_frames(c[j][1]) for c in clips.values() if j < len(c)), default=0)
                    for j in range(calls)
                ]
            )
            for j in range(calls):
                row = {d: c[j] for d, c in clips.items() if j < len(c)}
                arrays = layout.encode_arrays(
                    row, frames[j], self.config.audio.num_mel_bins, self.geometry, sched.domains
                )
                placed = self.batch.place(arrays)
                self._features = self.programs.encode(
                    self._features, placed["mel"], placed["mel_lengths"], placed["offsets"]
                )
                self.stats.encodes += 1
            for d in clips:
                sched.current(d).clips_encoded = True
        plans = {d: p for d, p in sched.next_chunks(self.buckets.chunks[-1]).items() if d in chosen}
        longest = max((p.length for p in plans.values()), default=0)
        shape = self.batch.agree(
            PrefillShape(self.buckets.chunk_length(longest) if plans else 0, any(p.start > 0 for p in plans.values()))
        )
        t = self.buckets.chunks[-1] if shape.extend else shape.length
        rows = layout.prefill_arrays(plans, t, self.config, self.geometry, sched.domains)
        self._state, pre = self.programs.prefill(
            self._state, self._features, self.batch.place(rows), bool(shape.extend), self._want_top
        )
        first, logprob, done = self.batch.mine((pre.first_token, pre.first_logprob, pre.done), len(sched.domains))
        if self._want_top:
            top_lps, top_ids = self.batch.mine((pre.top_logprobs, pre.top_ids), len(sched.domains))
        self.stats.prefill_s += time.perf_counter() - t0
        self.stats.prefills += 1
        finished = []
        for i, d in enumerate(sched.domains):
            plan: ChunkPlan | None = plans.get(d)
            if plan is None:
                continue
            sched.advance(plan)
            if not plan.final:
                continue
            slot = plan.admitted.slot
            k = plan.admitted.request.options.top_logprobs
            top = [alternatives(top_ids[i], top_lps[i], k)] if k else None
            outputs[slot] = _Output([int(first[i])], [float(logprob[i])], top)
            self.stats.tokens += 1
            if self._on_tokens is not None:
                self._on_tokens(plan.admitted.request.tag, [int(first[i])], [float(logprob[i])], top)
            if done[i]:
                finished.append(self._finish(slot, sched, outputs))
        return finished

    def _decode_chunk(self, sched: Scheduler, outputs: dict, stop_on_free: bool) -> Iterator:
        t0 = time.perf_counter()
        cancel = np.zeros((self.batch_size,), bool)
        cancel[list(self._cancel)] = True
        self._state, tokens, step_lps, n = self.programs.decode(
            self._state, jnp.asarray(stop_on_free), self.chunk, jnp.asarray(cancel), self._want_top
        )
        tokens, logprobs, done, n = self.batch.fetch((tokens, step_lps.chosen, self._state.done, n))
        if self._want_top:
            top_lps, top_ids = self.batch.fetch((step_lps.top, step_lps.top_ids))
        self.stats.decode_s += time.perf_counter() - t0
        self.stats.decode_calls += 1
        self.stats.decode_steps += int(n)
        for slot, out in list(outputs.items()):
            got = tokens[slot, : int(n)]
            keep = got != steps.NO_TOKEN
            new, new_logprobs = got[keep].tolist(), logprobs[slot, : int(n)][keep].tolist()
            k = sched.running[slot].request.options.top_logprobs
            top = [alternatives(top_ids[slot, j], top_lps[slot, j], k) for j in np.flatnonzero(keep)] if k else None
            out.top = out.top + top if k else None
            out.tokens += new
            out.logprobs += new_logprobs
            self.stats.tokens += len(new)
            if new and self._on_tokens is not None:
                self._on_tokens(sched.running[slot].request.tag, new, new_logprobs, top)
            if done[slot]:
                yield self._finish(slot, sched, outputs)

    def _finish(self, slot: int, sched: Scheduler, outputs: dict) -> tuple[object, GenerationOutput]:
        adm = sched.release(slot)
        out = outputs.pop(slot)
        self.stats.results += 1
        if self.stats.first_result_s is None:
            self.stats.first_result_s = time.perf_counter() - self._started
        ids = out.tokens[: adm.request.options.max_new_tokens]
        reason = "stop" if ids and ids[-1] in self.stop_ids else "length"
        if slot in self._cancel:
            self._cancel.discard(slot)
            reason = "cancelled"
        logprobs = out.logprobs[: len(ids)] if self.return_logprobs else None
        top = out.top[: len(ids)] if out.top is not None else None
        return adm.request.tag, GenerationOutput(ids, reason, logprobs, top_logprobs=top)
