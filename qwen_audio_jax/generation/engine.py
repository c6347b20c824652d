"""Host side of batch generation: bucket a batch, run the jitted `prefill` and `decode_loop`, unpack results."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.generation import steps
from qwen_audio_jax.generation.buckets import Buckets, to_buckets
from qwen_audio_jax.generation.sampling import SamplingParams
from qwen_audio_jax.model.layers import Dtype
from qwen_audio_jax.model.params import build_model
from qwen_audio_jax.text.processor import PreparedRequest, collate

MAX_STOP_IDS = 8  # stop ids are padded to this many so their number never changes the compiled program


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
    ):
        self.config = config
        self.model = build_model(config, dtype=dtype)
        self.params = jax.device_put(params)
        self.batch_size = batch_size
        self.buckets = buckets
        self._prefill = jax.jit(
            functools.partial(steps.prefill, self.model), static_argnames=("cache_len", "max_new_tokens")
        )
        self._decode = jax.jit(functools.partial(steps.decode_loop, self.model), donate_argnums=(1,))
        self.last_timings: dict[str, float] = {}  # prefill_s / decode_s of the last batch (device time included)

    def default_stop_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.config.eos_token_id, self.config.pad_token_id)))

    def compiled_programs(self) -> tuple[int, int]:
        return self._prefill._cache_size(), self._decode._cache_size()

    def generate(
        self, prepared: Sequence[PreparedRequest], options: GenerationOptions, key: jax.Array | None = None
    ) -> list[GenerationOutput]:
        """Generates for up to `batch_size` requests (left-padded together). Returns one output per request."""
        if not prepared:
            return []
        pad_id = self.config.pad_token_id
        batch = to_buckets(collate(prepared, pad_id=pad_id, padding_side="left"), self.buckets, self.batch_size, pad_id)
        stop = list(options.stop_ids or self.default_stop_ids())[:MAX_STOP_IDS]
        stop_criteria = steps.StopCriteria(
            stop_ids=jnp.asarray(stop + [stop[0]] * (MAX_STOP_IDS - len(stop)), jnp.int32),
            pad_id=jnp.asarray(pad_id, jnp.int32),
        )
        sampling = SamplingParams.create(
            options.temperature, options.top_k, options.top_p, options.repetition_penalty, options.min_new_tokens
        )
        key = jax.random.PRNGKey(options.seed) if key is None else key
        t0 = time.perf_counter()
        state = self._prefill(
            self.params,
            jnp.asarray(batch.tokens),
            jnp.asarray(batch.attention_mask),
            None if batch.mel is None else jnp.asarray(batch.mel),
            None if batch.mel_lengths is None else jnp.asarray(batch.mel_lengths),
            jnp.asarray(batch.rows_active),
            key,
            sampling,
            stop_criteria,
            cache_len=batch.tokens.shape[1] + options.max_new_tokens,
            max_new_tokens=options.max_new_tokens,
        )
        jax.block_until_ready(state.tokens)
        t1 = time.perf_counter()
        state = self._decode(self.params, state, sampling, stop_criteria, jnp.asarray(options.max_new_tokens, jnp.int32))
        tokens, logprobs = jax.device_get((state.tokens, state.logprobs))
        self.last_timings = {"prefill_s": t1 - t0, "decode_s": time.perf_counter() - t1,
                             "decode_steps": int(state.num_generated)}  # fmt: skip
        return [_unpack(tokens[i], logprobs[i], set(stop), options) for i in range(batch.num_real)]


def _unpack(tokens: np.ndarray, logprobs: np.ndarray, stop: set[int], options: GenerationOptions) -> GenerationOutput:
    ids = tokens.tolist()
    end = next((i + 1 for i, t in enumerate(ids) if t in stop), None)
    reason = "stop" if end is not None else "length"
    ids = ids[: end or options.max_new_tokens]
    lp = logprobs[: len(ids)].tolist() if options.return_logprobs else None
    return GenerationOutput(ids, reason, lp)
