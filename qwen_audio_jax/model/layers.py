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

from qwen_audio_jax.model.lora import LoraLayer, lora_delta
from qwen_audio_jax.model.quant import int8_matmul

Dtype = Any
_INIT_STD = 0.02


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    use_bias: bool,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str | None,
    quantized: bool = False,
    lora: LoraLayer | None = None,
) -> Linear:
    """A linear layer whose kernel (in, out) and bias (out,) carry logical axis names; `quantized`: an int8
    kernel with per-output-channel fp32 scales (model/quant.py); `lora`: a LoRA adapter on top (model/lora.py)."""
    return Linear(features, axes, use_bias, dtype, param_dtype, quantized, lora, name=name)


class Linear(nn.Module):
    """`nn.Dense` (same param names, init and arithmetic: both operands cast to the compute dtype), or with
    `quantized` a weight-only int8 layer: y = (x @ kernel_int8) * scale, scale [out] fp32; with `lora` PEFT's
    LoRA delta is added after the bias, as PEFT adds it to the base layer's output."""

    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool
    dtype: Dtype
    param_dtype: Dtype
    quantized: bool = False
    lora: LoraLayer | None = None

    @nn.compact
    def __call__(self, x):
        d_in = x.shape[-1]
        if self.quantized:
            kernel = param_with_axes(
                self, "kernel", nn.initializers.zeros_init(), (d_in, self.features), self.axes, jnp.int8
            )
            scale = param_with_axes(
                self, "scale", nn.initializers.ones_init(), (self.features,), (self.axes[1],), jnp.float32
            )
            y = int8_matmul(x.astype(self.dtype), kernel, scale)
        else:
            init = nn.initializers.normal(_INIT_STD)
            kernel = param_with_axes(self, "kernel", init, (d_in, self.features), self.axes, self.param_dtype)
            y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (((x.ndim - 1,), (0,)), ((), ())))
        if self.use_bias:
            bias = param_with_axes(
                self, "bias", nn.initializers.zeros_init(), (self.features,), (self.axes[1],), self.param_dtype
            )
            y = y + bias.astype(self.dtype)
        if self.lora is not None:
            y = y + lora_delta(self, x, self.features, self.axes, self.lora, self.dtype)
        return y


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
