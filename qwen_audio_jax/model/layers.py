"""Building blocks shared by the audio encoder and the decoder: dense layers with logical axes, norms, RoPE,
and masked softmax attention.

Numerics follow the PyTorch reference: norms and softmax run in fp32 whatever the compute dtype (DESIGN
decision 7), RMSNorm multiplies the weight after casting back (as transformers' Qwen2RMSNorm does).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
_INIT_STD = 0.02
# A finite "minus infinity": fully masked rows (left-padding queries) then give a uniform softmax instead of NaN.
MASK_VALUE = -1e30


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    use_bias: bool,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str,
) -> nn.Dense:
    """nn.Dense whose kernel (in, out) and bias (out,) carry logical axis names."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def param_with_axes(module: nn.Module, name: str, init, shape: Sequence[int], axes, dtype: Dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), dtype)


class RMSNorm(nn.Module):
    """Qwen2RMSNorm: `weight * (x32 * rsqrt(mean(x32^2) + eps)).astype(x.dtype)`."""

    eps: float
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = param_with_axes(self, "scale", nn.initializers.ones_init(), (x.shape[-1],), ("norm",), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * y.astype(x.dtype)


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm with weight and bias, statistics in fp32."""

    eps: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = param_with_axes(self, "scale", nn.initializers.ones_init(), (d,), ("norm",), self.param_dtype)
        bias = param_with_axes(self, "bias", nn.initializers.zeros_init(), (d,), ("norm",), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """inv_freq = 1 / theta^(2i/H), i < H/2, correctly rounded to fp32 (the reference computes it in fp32)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float64(theta) ** exponents.astype(np.float64))).astype(np.float32)


def rope_cos_sin(positions_BT: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin: [B, T, H] in fp32, with the half-split layout `cat(freqs, freqs)` of the reference."""
    inv_freq = jnp.asarray(rope_inv_freq(head_dim, theta))
    freqs = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    """x*cos + rotate_half(x)*sin, rotate_half(x) = cat(-x2, x1) (half split, not interleaved)."""
    half = x_BTNH.shape[-1] // 2
    x1, x2 = x_BTNH[..., :half], x_BTNH[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos = cos_BTH[:, :, None, :].astype(x_BTNH.dtype)  # the reference casts cos/sin to the activation dtype
    sin = sin_BTH[:, :, None, :].astype(x_BTNH.dtype)
    return x_BTNH * cos + rotated * sin


def attention(q_BTNH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, mask_BTS: jax.Array, scale: float) -> jax.Array:
    """Softmax attention with grouped KV heads; scores and softmax in fp32, output in q's dtype.

    Keys/values are [B, K, S, H] (the KV cache layout: each (b, k) reads one contiguous S x H block).
    mask_BTS: bool, True where query t may attend key s. Returns [B, T, N, H].
    """
    b, t, n, h = q_BTNH.shape
    k = k_BKSH.shape[1]
    q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
    scores = jnp.einsum("btkgh,bksh->bkgts", q_BTKGH, k_BKSH, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask_BTS[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BKSH.dtype)
    out = jnp.einsum("bkgts,bksh->btkgh", probs, v_BKSH)
    return out.reshape(b, t, n, h)
