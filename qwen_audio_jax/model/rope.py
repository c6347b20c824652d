"""Rotary position embeddings, with Qwen-7B's dynamic NTK scaling and logn attention scaling (Qwen-Audio v1).

Qwen2 uses plain RoPE (theta 10000, half-split `cat(freqs, freqs)` layout). Qwen-7B, at inference, stretches
the RoPE base by `alpha**(H / (H - 2))` with `alpha = max(2**ceil(log2(L / ntk_context) + 1) - 1, 1)` for a
context of L tokens at prefill (kept for every decode step), and multiplies each query at 1-based position
i > ntk_context by `log(i) / log(ntk_context)`. Both are identity up to `ntk_context` tokens.

Alpha takes few values (1, 3, 7, 15, ...), so the inverse frequencies of each are a small host-computed table
(float64, rounded once to fp32, as the reference computes them in fp32 from a Python float base) and a row
carries only its index into it: `ntk_index(L)`, computed on the host from the row's own true length, never
from a padded one (docs/reference.md §3.4).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.config import DecoderConfig


def inv_freq(head_dim: int, base: float) -> np.ndarray:
    """inv_freq = 1 / base^(2i/H), i < H/2, rounded to fp32 (the reference's fp32 `arange(0, H, 2) / H`)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float64(base) ** exponents.astype(np.float64))).astype(np.float32)


def ntk_alpha(length: int, context: int) -> float:
    """Qwen-7B's `get_ntk_alpha`: 1 up to `context` tokens, then 3, 7, 15... as the context doubles."""
    value = math.log(max(length, 1) / context, 2) + 1
    return max(2 ** math.ceil(value) - 1, 1)


def ntk_alphas(config: DecoderConfig) -> tuple[float, ...]:
    """The alphas a context of up to max_position_embeddings tokens can take: 1, 3, 7, ... ((1,) without NTK).

    Alpha is always 2**j - 1; one more doubling than the largest context needs covers the reference's own
    floating-point rounding of log2 at exact powers of two."""
    if not config.dynamic_ntk:
        return (1,)
    top = math.ceil(math.log(config.max_position_embeddings / config.ntk_context, 2) + 1) + 1
    return tuple(max(2**j - 1, 1) for j in range(1, max(top, 1) + 1))


def ntk_index(length: int, config: DecoderConfig) -> int:
    """Row of `inv_freq_table` for a context of `length` real tokens at prefill."""
    if not config.dynamic_ntk:
        return 0
    return ntk_alphas(config).index(ntk_alpha(length, config.ntk_context))


@functools.lru_cache(maxsize=16)
def inv_freq_table(config: DecoderConfig) -> np.ndarray:
    """[R, H/2] fp32: inverse frequencies for each alpha of `ntk_alphas` (R = 1 for plain RoPE)."""
    h = config.head_dim
    return np.stack([inv_freq(h, config.rope_theta * a ** (h / (h - 2))) for a in ntk_alphas(config)])


def cos_sin(positions_BT: jax.Array, table_RH: np.ndarray, index_B: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """cos, sin: [B, T, H] fp32 in the half-split layout. index_B picks each row's table row (None: row 0)."""
    table = jnp.asarray(table_RH)
    freqs_BH = table[0][None] if index_B is None else table[index_B]
    freqs = positions_BT.astype(jnp.float32)[..., None] * freqs_BH[:, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    """x*cos + rotate_half(x)*sin, rotate_half(x) = cat(-x2, x1) (half split, not interleaved)."""
    half = x_BTNH.shape[-1] // 2
    x1, x2 = x_BTNH[..., :half], x_BTNH[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos = cos_BTH[:, :, None, :].astype(x_BTNH.dtype)  # the reference casts cos/sin to the activation dtype
    sin = sin_BTH[:, :, None, :].astype(x_BTNH.dtype)
    return x_BTNH * cos + rotated * sin


@functools.lru_cache(maxsize=16)
def logn_table(config: DecoderConfig) -> np.ndarray:
    """[max_position_embeddings] fp32: the logn query factor of each 0-based position (1 where inactive).

    Computed in float64 on the host, as the reference builds its list with math.log, then stored in fp32."""
    n, c = config.max_position_embeddings, config.ntk_context
    i = np.arange(1, n + 1, dtype=np.float64)
    factor = np.where(i > c, np.log(i) / math.log(c), 1.0)
    return factor.astype(np.float32)


def logn_scale(q_BTNH: jax.Array, positions_BT: jax.Array, config: DecoderConfig) -> jax.Array:
    """Queries times their position's logn factor (identity unless config.logn_attention)."""
    if not config.logn_attention:
        return q_BTNH
    table = jnp.asarray(logn_table(config))
    factor = table[jnp.clip(positions_BT, 0, table.shape[0] - 1)]
    return q_BTNH * factor[:, :, None, None].astype(q_BTNH.dtype)
