"""Building the module and its parameter trees: real (random init), abstract (shapes only), logical axes, and
the parameter groups the optimizer and the memory planner share."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.model.attention import resolve
from qwen_audio_jax.model.audio_lm import AudioLanguageModel
from qwen_audio_jax.model.layers import Dtype
from qwen_audio_jax.model.lora import LoraSpec


def build_module(
    config: ModelConfig,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    remat_policy: str = "none",
    attention: str = "auto",
    inference_scaling: bool = True,
    quantized: bool = False,
    lora: LoraSpec | None = None,
) -> AudioLanguageModel:
    """The linen module. dtype: compute dtype; param_dtype: the dtype params are created in (loaded params keep
    their own); attention: "auto" | "xla" | "dot_product" | "cudnn" (model/attention.py); inference_scaling:
    v1's NTK and logn attention (off for training, as in the reference); quantized: int8 decoder kernels and
    lm_head (model/quant.py); lora: LoRA adapters on the targeted linear layers (model/lora.py). The generation
    engine clones it with a paged-cache mode (model/decoder.py)."""
    return AudioLanguageModel(
        config,
        dtype=dtype,
        param_dtype=param_dtype,
        remat_policy=remat_policy,
        attention=resolve(attention),
        inference_scaling=inference_scaling,
        quantized=quantized,
        lora=lora,
    )


def _init_boxed(
    config: ModelConfig, rng: jax.Array, param_dtype: Dtype, quantized: bool = False, lora: LoraSpec | None = None
):
    module = build_module(config, param_dtype=param_dtype, attention="xla", quantized=quantized, lora=lora)
    tokens = jnp.zeros((1, 8), jnp.int32)
    mel = jnp.zeros((1, config.audio.num_mel_bins, 8), jnp.float32)  # touches every submodule
    return module.init(rng, tokens, jnp.ones_like(tokens), mel, jnp.array([8], jnp.int32))["params"]


def init_params(config: ModelConfig, rng: jax.Array | None = None, param_dtype: Dtype = jnp.float32) -> dict:
    """Random-init params (normal(0.02) kernels, zero biases, unit norms): a nested dict of arrays."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return nn.unbox(jax.jit(_init_boxed, static_argnums=(0, 2))(config, rng, param_dtype))


def abstract_params(
    config: ModelConfig, param_dtype: Dtype = jnp.float32, quantized: bool = False, lora: LoraSpec | None = None
) -> dict:
    """Shapes and dtypes of every param (ShapeDtypeStructs), without allocating anything; `quantized`: the tree
    `--quantize int8` gives (int8 kernels and their fp32 scales); `lora`: with the adapter leaves (fp32, split
    them off with model/lora.py `split`). Cached: treat the tree as read-only."""
    return _abstract(config, jnp.dtype(param_dtype), bool(quantized), lora)  # one cache key however it is called


def logical_axes(config: ModelConfig, quantized: bool = False, lora: LoraSpec | None = None) -> dict:
    """PartitionSpec of logical axis names for every param (e.g. P('layers', 'embed', 'mlp')). Cached."""
    return _axes(config, bool(quantized), lora)


@functools.lru_cache(maxsize=8)
def _abstract(config: ModelConfig, param_dtype, quantized: bool, lora: LoraSpec | None) -> dict:
    # Traced outside any mesh: the model's activation constraints need no sharding to describe shapes.
    with jax.set_mesh(None), nn.logical_axis_rules(()):
        return nn.unbox(
            jax.eval_shape(lambda: _init_boxed(config, jax.random.PRNGKey(0), param_dtype, quantized, lora))
        )


@functools.lru_cache(maxsize=8)
def _axes(config: ModelConfig, quantized: bool, lora: LoraSpec | None) -> dict:
    with jax.set_mesh(None), nn.logical_axis_rules(()):
        boxed = jax.eval_shape(lambda: _init_boxed(config, jax.random.PRNGKey(0), jnp.float32, quantized, lora))
    return nn.get_partition_spec(boxed)


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


# Parameter groups: "encoder" (audio_tower), "projector" (multi_modal_projector), "lm" (everything else) and
# "frozen" (the encoder's stored positional embedding, which the reference never trains).
PARAM_GROUPS = ("encoder", "projector", "lm", "frozen")


def param_group(path: tuple[str, ...]) -> str:
    """The group of the param at `path` (its keys in the nested dict)."""
    if path[:2] == ("audio_tower", "embed_positions"):
        return "frozen"  # requires_grad_(False) in the reference (a Whisper sinusoid buffer in v1)
    return {"audio_tower": "encoder", "multi_modal_projector": "projector"}.get(path[0], "lm")
