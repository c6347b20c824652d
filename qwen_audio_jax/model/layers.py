"""Building blocks shared by the audio encoder and the decoder: dense layers with logical axes and norms.

Numerics follow the PyTorch reference: norms run in fp32 whatever the compute dtype (docs/decisions.md,
"dtypes"), RMSNorm multiplies the weight after casting back (as transformers' Qwen2RMSNorm does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_INIT_STD = 0.02


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
