"""Host side of batch generation: bucket a batch, run the jitted `prefill` and `decode_loop`, unpack results."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.generation import steps
from qwen_audio_jax.generation.buckets import Buckets, to_buckets
from qwen_audio_jax.generation.sampling import SamplingParams
from qwen_audio_jax.model.decoder import KVCache
from qwen_audio_jax.model.layers import Dtype
from qwen_audio_jax.sharding import axes as ax
from qwen_audio_jax.sharding import mesh as shd
from qwen_audio_jax.model.params import build_model
from qwen_audio_jax.text.processor import PreparedRequest, collate

MAX_STOP_IDS = 8  # stop ids are padded to this many so their number never changes the compiled program
PREFILL_STATIC = (9, 10, 11)  # cache_len, max_new_tokens, with_logprobs (positions after `model` is bound)
DECODE_STATIC = (5,)  # with_logprobs


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """What to generate. Sampling values are traced: changing them never recompiles."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 0.0  # 0 = greedy (transformers' do_sample=False)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    stop_ids: tuple[int, ...] | None = None  # None: the model's eos and <|endoftext|>
    seed: int = 0
    return_logprobs: bool = False


@dataclasses.dataclass
class GenerationOutput:
    token_ids: list[int]  # generated ids, the stop id included when one was produced
    finish_reason: str  # "stop" | "length"
    logprobs: list[float] | None = None  # model log-prob of each generated id (unprocessed logits)


class Engine:
    """Jitted generation over batches of PreparedRequests (one batch per `generate` call).

    Compiles one prefill program per (length, clips, frames) bucket and one decode program per length bucket;
    `compiled_programs()` reports the counts.
    """

    def __init__(
        self,
        config: ModelConfig,
        params,
        *,
        dtype: Dtype = jnp.float32,
        batch_size: int = 8,
        buckets: Buckets = Buckets(),
        mesh: Mesh | None = None,
        rules: shd.Rules = ax.INFERENCE_RULES,
    ):
        self.config = config
        self.model = build_model(config, dtype=dtype)
        self.buckets = buckets
        self.mesh, self.rules = mesh, rules
        prefill = functools.partial(steps.prefill, self.model)
        decode = functools.partial(steps.decode_loop, self.model)
        if mesh is None:
            self.batch_size = batch_size
            self.params = jax.device_put(params)
            self._prefill = jax.jit(prefill, static_argnums=PREFILL_STATIC)
            self._decode = jax.jit(decode, static_argnums=DECODE_STATIC, donate_argnums=(1,))
        else:
            # A batch that does not divide the batch axes is padded (inactive rows), never refused.
            divisor = math.lcm(shd.batch_divisor(mesh, rules), jax.process_count())
            self.batch_size = -(-batch_size // divisor) * divisor
            p_sh = shd.param_shardings(mesh, config, rules)
            self.params = jax.device_put(params, p_sh)  # a no-op for params restored into these shardings
            rep, b1, b2 = shd.replicated(mesh), shd.batch_sharding(mesh, 1, rules), shd.batch_sharding(mesh, 2, rules)
            cache_spec = shd.spec_for(
                (ax.LAYERS, ax.BATCH, ax.ACT_HEADS, ax.CACHE_LENGTH, None),
                (config.decoder.num_layers, self.batch_size, config.decoder.num_kv_heads, 1, config.decoder.head_dim),
                mesh, rules,
            )  # fmt: skip
            cache = NamedSharding(mesh, cache_spec)
            state = steps.DecodeState(
                cache=KVCache(cache, cache), cache_mask=b2, write_index=rep, next_position=b1, last_token=b1,
                tokens=b2, logprobs=b2, num_generated=rep, done=b1, seen=b2, key=rep,
            )  # fmt: skip
            self._prefill = jax.jit(
                prefill, static_argnums=PREFILL_STATIC,
                in_shardings=(p_sh, b2, b2, None, None, b1, rep, rep, rep), out_shardings=state,
            )  # fmt: skip
            self._decode = jax.jit(
                decode, in_shardings=(p_sh, state, rep, rep, rep), static_argnums=DECODE_STATIC,
                out_shardings=state, donate_argnums=(1,),
            )  # fmt: skip
        self.last_timings: dict[str, float] = {}  # prefill_s / decode_s of the last batch (device time included)

    def default_stop_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.config.eos_token_id, self.config.pad_token_id)))

    def compiled_programs(self) -> tuple[int, int]:
        return self._prefill._cache_size(), self._decode._cache_size()

    def generate(
        self, prepared: Sequence[PreparedRequest], options: GenerationOptions, key: jax.Array | None = None
    ) -> list[GenerationOutput]:
        """Generates for up to `batch_size` requests (left-padded together). Returns one output per request.

        Multi-host (several processes sharing the mesh): every process must call this the same number of times,
        with up to `batch_size // process_count` requests each (possibly none); each gets its own outputs.
        """
        multi = self.mesh is not None and jax.process_count() > 1
        if not prepared and not multi:
            return []
        pad_id = self.config.pad_token_id
        inputs = collate(prepared, pad_id=pad_id, padding_side="left") if prepared else None
        if multi:
            batch = self._global_batch(inputs, pad_id)
        else:
            batch = to_buckets(inputs, self.buckets, self.batch_size, pad_id)
        stop = list(options.stop_ids or self.default_stop_ids())[:MAX_STOP_IDS]
        stop_criteria = steps.StopCriteria(
            stop_ids=jnp.asarray(stop + [stop[0]] * (MAX_STOP_IDS - len(stop)), jnp.int32),
            pad_id=jnp.asarray(pad_id, jnp.int32),
        )
        sampling = SamplingParams.create(
            options.temperature, options.top_k, options.top_p, options.repetition_penalty, options.min_new_tokens
        )
        key = jax.random.PRNGKey(options.seed) if key is None else key
        with shd.activated(self.mesh, self.rules):
            return self._run(batch, sampling, stop_criteria, key, options, stop)

    def _run(self, batch, sampling, stop_criteria, key, options, stop) -> list[GenerationOutput]:
        t0 = time.perf_counter()
        state = self._prefill(
            self.params,
            self._put(batch.tokens),
            self._put(batch.attention_mask),
            self._put_clips(batch.mel),
            self._put_clips(batch.mel_lengths),
            self._put(batch.rows_active),
            key,
            sampling,
            stop_criteria,
            batch.tokens.shape[1] + options.max_new_tokens,  # cache_len (static)
            options.max_new_tokens,  # (static)
            options.return_logprobs,  # (static)
        )
        jax.block_until_ready(state.tokens)
        t1 = time.perf_counter()
        until = jnp.asarray(options.max_new_tokens, jnp.int32)
        state = self._decode(self.params, state, sampling, stop_criteria, until, options.return_logprobs)
        if jax.process_count() > 1 and self.mesh is not None:
            from jax.experimental import multihost_utils

            tokens, logprobs = (np.asarray(x) for x in multihost_utils.process_allgather((state.tokens, state.logprobs), tiled=True))
            local = self.batch_size // jax.process_count()
            start = jax.process_index() * local
            tokens, logprobs = tokens[start : start + local], logprobs[start : start + local]
        else:
            tokens, logprobs = jax.device_get((state.tokens, state.logprobs))
        self.last_timings = {"prefill_s": t1 - t0, "decode_s": time.perf_counter() - t1,
                             "decode_steps": int(state.num_generated)}  # fmt: skip
        return [_unpack(tokens[i], logprobs[i], set(stop), options) for i in range(batch.num_real)]

    def _global_batch(self, inputs, pad_id: int):
        """Multi-host: agree on bucket sizes, then concatenate every process's rows (and clips) in process
        order, so rows and clips stay aligned for the audio merge; the result is identical on all processes."""
        from jax.experimental import multihost_utils

        from qwen_audio_jax.generation.buckets import BucketedBatch, bucket_sizes

        procs = jax.process_count()
        local_size = self.batch_size // procs
        sizes = np.asarray(multihost_utils.process_allgather(np.asarray(bucket_sizes(inputs, self.buckets))))
        sizes = tuple(int(v) for v in sizes.reshape(procs, 3).max(0))
        local = to_buckets(inputs, self.buckets, local_size, pad_id, sizes=sizes)

        def gather(x):
            return None if x is None else np.concatenate(list(np.asarray(multihost_utils.process_allgather(x, tiled=False))))

        return BucketedBatch(gather(local.tokens), gather(local.attention_mask), gather(local.mel),
                             gather(local.mel_lengths), gather(local.rows_active), local.num_real)  # fmt: skip

    def _put(self, x: np.ndarray) -> jax.Array:
        """Host batch -> device, split over the batch axes on a mesh."""
        if self.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(x, shd.batch_sharding(self.mesh, x.ndim, self.rules))

    def _put_clips(self, x: np.ndarray | None) -> jax.Array | None:
        """Clips are not aligned with rows; split them over the batch axes when they divide, else replicate."""
        if x is None or self.mesh is None:
            return None if x is None else jnp.asarray(x)
        if len(x) % shd.batch_divisor(self.mesh, self.rules) == 0:
            return jax.device_put(x, shd.batch_sharding(self.mesh, x.ndim, self.rules))
        return jax.device_put(x, shd.replicated(self.mesh))


def _unpack(tokens: np.ndarray, logprobs: np.ndarray, stop: set[int], options: GenerationOptions) -> GenerationOutput:
    ids = tokens.tolist()
    end = next((i + 1 for i, t in enumerate(ids) if t in stop), None)
    reason = "stop" if end is not None else "length"
    ids = ids[: end or options.max_new_tokens]
    lp = logprobs[: len(ids)].tolist() if options.return_logprobs else None
    return GenerationOutput(ids, reason, lp)
