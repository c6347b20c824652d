"""How the engine lays out its data: the shardings of the slot state and of prefill's outputs (one layout
across prefill, insert, decode and grow, so each program is reused and every donation lands), and the host
arrays of a prefill batch."""

from __future__ import annotations

import jax
import numpy as np

from qwen_audio_jax.batching.buckets import Buckets, to_buckets
from qwen_audio_jax.config import DecoderConfig, ModelConfig
from qwen_audio_jax.generation import steps
from qwen_audio_jax.generation.sampling import SamplingParams
from qwen_audio_jax.model import axes, rope
from qwen_audio_jax.sharding.placement import Placement
from qwen_audio_jax.text.processor import collate


def state_shardings(placement: Placement, config: DecoderConfig, batch: int) -> steps.SlotState:
    """Slots split over the batch axes; the cache by its logical axes (the cache length is never split, so one
    sharding serves every cache length)."""
    cache = placement.logical_sharding(
        axes.CACHE_AXES, (config.num_layers, batch, config.num_kv_heads, 1, config.head_dim)
    )
    rows, rows2 = placement.batch_sharding(1), placement.batch_sharding(2)
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
        sampling=SamplingParams(rows, rows, rows, rows, rows),
    )


def prefilled_shardings(state: steps.SlotState) -> steps.Prefilled:
    """Prefill's outputs laid out like the slots (rows over the batch axes), so insert sees one layout."""
    rows, rows2 = state.lengths, state.seen
    return steps.Prefilled(
        k=state.cache.k,
        v=state.cache.v,
        lengths=rows,
        rope_index=rows,
        first_token=rows,
        first_logprob=rows,
        done=rows,
        seen=rows2,
        keys=rows2,
        max_new=rows,
        sampling=state.sampling,
    )


def prefill_arrays(
    new, slots, rows: int, sizes: tuple[int, int, int], config: ModelConfig, buckets: Buckets, slot_count: int
) -> dict:
    """Host arrays of one process's `rows` prefill rows for the EngineRequests `new` going into `slots`:
    right-padded to sizes = (length, clips, frames); padding rows target slot `slot_count` (dropped)."""
    pad = config.pad_token_id
    inputs = collate([r.prepared for r in new], pad_id=pad, padding_side="right") if new else None
    batch = to_buckets(inputs, buckets, rows, pad, sizes=sizes, n_mels=config.audio.num_mel_bins, padding_side="right")
    lengths = np.zeros(rows, np.int32)
    lengths[: len(new)] = [r.prepared.num_tokens for r in new]
    keys = np.zeros((rows, 2), np.uint32)
    for i, r in enumerate(new):  # raw uint32[2] keys: each request's own stream (its seed and id)
        keys[i] = np.asarray(jax.random.fold_in(jax.random.PRNGKey(r.options.seed), r.options.stream))
    settings = [r.options.sampling_row for r in new] + [(0.0, 0, 1.0, 1.0, 0)] * (rows - len(new))
    max_new = np.ones(rows, np.int32)
    max_new[: len(new)] = [r.options.max_new_tokens for r in new]
    slot_ids = np.full(rows, slot_count, np.int32)
    slot_ids[: len(new)] = slots
    rope_index = np.zeros(rows, np.int32)
    rope_index[: len(new)] = [rope.ntk_index(r.prepared.num_tokens, config.decoder) for r in new]
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
