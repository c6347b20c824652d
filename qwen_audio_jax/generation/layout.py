"""How the engine lays out its data: the shardings of the slot state (one layout across prefill and decode, so
every donation lands), and the host arrays of an encode or prefill call (one row per page domain)."""

from __future__ import annotations

import numpy as np

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.generation import steps
from qwen_audio_jax.generation.options import SamplingSettings
from qwen_audio_jax.generation.sampling import SamplingParams
from qwen_audio_jax.generation.scheduler import CacheGeometry, ChunkPlan
from qwen_audio_jax.model import axes, paged, rope
from qwen_audio_jax.sharding.placement import Placement

# The page pool [L, D, NP, K, P, H]: domains split like the batch, kv heads like the model's heads.
POOL_AXES = (axes.LAYERS, axes.BATCH, None, axes.ACT_HEADS, None, None)


def pool_shape(config: ModelConfig, geometry: CacheGeometry) -> tuple[int, ...]:
    d = config.decoder
    return (d.num_layers, geometry.domains, geometry.pages, d.num_kv_heads, geometry.page_size, d.head_dim)


def state_shardings(placement: Placement, config: ModelConfig, geometry: CacheGeometry, kv_int8: bool):
    """Slots split over the batch axes; the pool by POOL_AXES."""
    shape = pool_shape(config, geometry)
    pool = placement.logical_sharding(POOL_AXES, shape)
    scale = placement.logical_sharding(POOL_AXES[:-1], shape[:-1]) if kv_int8 else None
    rows, rows2 = placement.batch_sharding(1), placement.batch_sharding(2)
    return steps.SlotState(
        pool=paged.PagedKV(pool, pool, scale, scale),
        table=rows2,
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


def encode_arrays(
    clips: dict[int, tuple[np.ndarray, int, int]], frames: int, n_mels: int, geometry, domains: list[int]
) -> dict:
    """Host arrays of this process's rows of one encode call: row i holds domain domains[i]'s clip (mel cut to
    `frames`, valid length, buffer row) or a padding clip (length 0) aimed at the domain's scratch rows past
    its region's longest prompt."""
    mel = np.zeros((len(domains), n_mels, frames), np.float32)
    lengths = np.zeros(len(domains), np.int32)
    offsets = np.asarray([d * geometry.feature_rows + geometry.max_len for d in domains], np.int32)
    for i, d in enumerate(domains):
        if d in clips:
            m, length, offset = clips[d]
            mel[i] = m[:, :frames]
            lengths[i] = length
            offsets[i] = d * geometry.feature_rows + offset
    return {"mel": mel, "mel_lengths": lengths, "offsets": offsets}


def prefill_arrays(
    plans: dict[int, ChunkPlan], t: int, config: ModelConfig, geometry: CacheGeometry, domains: list[int]
) -> steps.PrefillRows:
    """Host arrays (numpy) of this process's rows of one prefill call: row i is domain domains[i]'s chunk,
    right-padded to t tokens; a domain with nothing to prefill gets a padding row (no tokens, slot B: every
    write is dropped)."""
    r = len(domains)
    tokens = np.full((r, t), config.pad_token_id, np.int32)
    n_real, start = np.zeros(r, np.int32), np.zeros(r, np.int32)
    final = np.zeros(r, bool)
    slot = np.full(r, geometry.slots, np.int32)
    table = np.zeros((r, geometry.max_pages), np.int32)
    audio_offset = np.asarray([d * geometry.feature_rows for d in domains], np.int32)
    rope_index, max_new = np.zeros(r, np.int32), np.ones(r, np.int32)
    seed, stream = np.zeros(r, np.uint32), np.zeros(r, np.uint32)
    settings = [SamplingSettings()] * r
    for d, plan in ((i, plans[dom]) for i, dom in enumerate(domains) if dom in plans):
        adm, req = plan.admitted, plan.admitted.request
        tokens[d, : plan.length] = adm.tokens[plan.start : plan.start + plan.length]
        n_real[d], start[d], final[d], slot[d] = plan.length, plan.start, plan.final, adm.slot
        table[d, : len(adm.pages)] = adm.pages
        audio_offset[d] += plan.audio_before
        rope_index[d] = rope.ntk_index(req.prepared.num_tokens, config.decoder)
        max_new[d] = req.options.max_new_tokens
        seed[d], stream[d] = req.options.seed, req.options.stream
        settings[d] = req.options.sampling_row
    return steps.PrefillRows(
        tokens=tokens,
        n_real=n_real,
        start=start,
        final=final,
        slot=slot,
        table=table,
        audio_offset=audio_offset,
        rope_index=rope_index,
        seed=seed,
        stream=stream,
        max_new=max_new,
        sampling=SamplingParams.rows(settings),
    )
