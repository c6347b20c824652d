"""Building the model and its parameter trees: real (random init), abstract (shapes only), and logical axes."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.model.layers import Dtype
from qwen_audio_jax.model.qwen2_audio import Qwen2AudioForConditionalGeneration


def build_model(
    config: ModelConfig, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, remat_policy: str = "none"
) -> Qwen2AudioForConditionalGeneration:
    """dtype: compute dtype; param_dtype: the dtype params are created in (loaded params keep their own)."""
    return Qwen2AudioForConditionalGeneration(config, dtype=dtype, param_dtype=param_dtype, remat_policy=remat_policy)


def _init_boxed(config: ModelConfig, rng: jax.Array, param_dtype: Dtype):
    model = build_model(config, param_dtype=param_dtype)
    tokens = jnp.zeros((1, 8), jnp.int32)
    mel = jnp.zeros((1, config.audio.num_mel_bins, 8), jnp.float32)  # touches every submodule
    return model.init(rng, tokens, jnp.ones_like(tokens), mel, jnp.array([8], jnp.int32))["params"]


def init_params(config: ModelConfig, rng: jax.Array | None = None, param_dtype: Dtype = jnp.float32) -> dict:
    """Random-init params (normal(0.02) kernels, zero biases, unit norms): a nested dict of arrays."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return nn.unbox(jax.jit(_init_boxed, static_argnums=(0, 2))(config, rng, param_dtype))


@functools.lru_cache(maxsize=8)
def abstract_params(config: ModelConfig, param_dtype: Dtype = jnp.float32) -> dict:
    """Shapes and dtypes of every param (ShapeDtypeStructs), without allocating anything. Cached: treat the
    returned tree as read-only."""
    return nn.unbox(jax.eval_shape(lambda: _init_boxed(config, jax.random.PRNGKey(0), param_dtype)))


def logical_axes(config: ModelConfig) -> dict:
    """PartitionSpec of logical axis names for every param (e.g. P('layers', 'embed', 'mlp'))."""
    boxed = jax.eval_shape(lambda: _init_boxed(config, jax.random.PRNGKey(0), jnp.float32))
    return nn.get_partition_spec(boxed)


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


__all__ = ["build_model", "init_params", "abstract_params", "logical_axes", "count_params", "PartitionSpec"]
