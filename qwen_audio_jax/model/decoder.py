"""The decoder (Qwen2, and Qwen-7B in the same layout) with an explicit, functional, slot-based KV cache.

Three ways to run the same scanned layers:
  * no cache (training, scoring, parity): causal self-attention over the T given tokens;
  * prefill (`return_kv`): the same attention, and every layer's new keys/values are returned as [L, B, K, T, H]
    so the engine can insert them into free cache slots (generation/steps.py `insert`);
  * decode: one new token per row is written into the cache at that row's own position (rows are independent
    slots at different depths), then attends over all S cache entries of its row.
The cache lives in the scan *carry* and each layer writes only its new rows (a scatter), so a decode step costs
one read of the cache, not a copy of it.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwen_audio_jax.config import DecoderConfig
from qwen_audio_jax.model import axes, rope
from qwen_audio_jax.model.attention import attend
from qwen_audio_jax.model.layers import Dtype, RMSNorm, dense
from qwen_audio_jax.model.remat import remat_layer


class KVCache(NamedTuple):
    """k, v: [L, B, K, S, H]. Row b is a slot; entry s of it holds the s-th token of that slot's sequence.

    K comes before S so that attention for each (b, k) reads one contiguous S x H block: measured 1.7x faster
    decode attention on CPU than the S-major layout, which XLA transposes on every step.
    """

    k: jax.Array
    v: jax.Array

    @classmethod
    def zeros(cls, config: DecoderConfig, batch: int, max_len: int, dtype: Dtype) -> KVCache:
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def positions_from_mask(mask_BT: jax.Array) -> jax.Array:
    """RoPE positions of a padded batch: cumsum(mask) - 1, pads set to 1 (transformers' generate; for a right-
    padded or unpadded row these are 0..n-1, what the request gets alone)."""
    pos = jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1
    return jnp.where(mask_BT.astype(bool), pos, 1)


def causal_mask(mask_BT: jax.Array) -> jax.Array:
    """[B, T, T] bool: query t may see key s iff s <= t and key s is a real token."""
    t = mask_BT.shape[-1]
    s = jnp.arange(t)
    return (s[None, None, :] <= s[None, :, None]) & mask_BT[:, None, :].astype(bool)


class Attention(nn.Module):
    """q/k/v with bias, o without; RoPE (+ v1's logn query scaling); grouped KV heads; optional cache write."""

    config: DecoderConfig
    dtype: Dtype
    param_dtype: Dtype
    attention: str = "xla"
    inference_scaling: bool = True  # v1's logn query scaling (the reference applies it at inference only)

    @nn.compact
    def __call__(self, x_BTD, positions_BT, cos_BTH, sin_BTH, mask_BTS, cache_k, cache_v, layer_index, write_B):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, t, _ = x_BTD.shape
        n, k, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = dense(n * hd, (axes.EMBED, axes.Q_HEADS), use_bias=True, name="q_proj", **kw)(x_BTD).reshape(b, t, n, hd)
        kk = dense(k * hd, (axes.EMBED, axes.KV_HEADS), use_bias=True, name="k_proj", **kw)(x_BTD)
        v = dense(k * hd, (axes.EMBED, axes.KV_HEADS), use_bias=True, name="v_proj", **kw)(x_BTD)
        q = rope.apply(q, cos_BTH, sin_BTH)
        if self.inference_scaling:
            q = rope.logn_scale(q, positions_BT, cfg)
        kk = rope.apply(kk.reshape(b, t, k, hd), cos_BTH, sin_BTH)

        keys, values = kk.swapaxes(1, 2), v.reshape(b, t, k, hd).swapaxes(1, 2)  # [B, K, T, H]
        new_kv = (keys, values)
        if cache_k is not None:  # decode: T == 1, row b writes at its own position write_B[b]
            rows = jnp.arange(b)
            cache_k = cache_k.at[layer_index, rows, :, write_B, :].set(keys[:, :, 0].astype(cache_k.dtype))
            cache_v = cache_v.at[layer_index, rows, :, write_B, :].set(values[:, :, 0].astype(cache_v.dtype))
            keys = jax.lax.dynamic_index_in_dim(cache_k, layer_index, keepdims=False).astype(self.dtype)
            values = jax.lax.dynamic_index_in_dim(cache_v, layer_index, keepdims=False).astype(self.dtype)
        a = attend(q, keys, values, mask_BTS, hd**-0.5, self.attention)
        out = dense(cfg.hidden_size, (axes.Q_HEADS, axes.EMBED), use_bias=False, name="o_proj", **kw)(
            a.reshape(b, t, n * hd)
        )
        return out, cache_k, cache_v, new_kv


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Qwen-7B's `c_proj(w1(x) * silu(w2(x)))` is the same with w2 = gate."""

    config: DecoderConfig
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
        gate = dense(cfg.intermediate_size, (axes.EMBED, axes.MLP), name="gate_proj", **kw)(x)
        up = dense(cfg.intermediate_size, (axes.EMBED, axes.MLP), name="up_proj", **kw)(x)
        return dense(cfg.hidden_size, (axes.MLP, axes.EMBED), name="down_proj", **kw)(jax.nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-RMSNorm layer. Scan signature: (carry=(h, cache_k, cache_v), layer_index, *broadcast) -> (carry, kv)."""

    config: DecoderConfig
    dtype: Dtype
    param_dtype: Dtype
    attention: str = "xla"
    return_kv: bool = False
    inference_scaling: bool = True

    @nn.compact
    def __call__(self, carry, layer_index, positions_BT, cos_BTH, sin_BTH, mask_BTS, write_B):
        h_BTD, cache_k, cache_v = carry
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="input_layernorm")(h_BTD)
        a, cache_k, cache_v, new_kv = Attention(
            cfg, name="self_attn", attention=self.attention, inference_scaling=self.inference_scaling, **kw
        )(x, positions_BT, cos_BTH, sin_BTH, mask_BTS, cache_k, cache_v, layer_index, write_B)
        h_BTD = h_BTD + a
        x = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="post_attention_layernorm")(h_BTD)
        h_BTD = h_BTD + MLP(cfg, name="mlp", **kw)(x)
        h_BTD = nn.with_logical_constraint(h_BTD, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))
        return (h_BTD, cache_k, cache_v), (new_kv if self.return_kv else None)


class Decoder(nn.Module):
    """embed_tokens + L scanned layers + final norm. `embed` is separate so audio can be merged first."""

    config: DecoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    attention: str = "xla"
    return_kv: bool = False  # prefill: also return every layer's new keys/values (a static mode of the module)
    inference_scaling: bool = True  # v1's logn attention (training runs without it, as the reference does)

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (axes.EMBED_VOCAB, axes.EMBED)),
        )
        self.norm = RMSNorm(cfg.rms_norm_eps, self.param_dtype)
        self.layers = nn.scan(
            remat_layer(DecoderLayer, self.remat_policy),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0,) + (nn.broadcast,) * 5,
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )(cfg, self.dtype, self.param_dtype, self.attention, self.return_kv, self.inference_scaling)

    def embed(self, tokens_BT):
        return self.embed_tokens(tokens_BT)

    def __call__(
        self, embeds_BTD, positions_BT, mask_BTS, *, rope_index_B=None, cache: KVCache | None = None, write_B=None
    ):
        """Runs the layers over embeddings. mask_BTS: [B, T, T] without a cache, [B, 1, S] with one.

        rope_index_B: each row's RoPE table row (v1's NTK alpha; None: plain RoPE). cache + write_B: decode,
        row b writes its token at cache entry write_B[b].
        Returns (hidden_BTD after the final norm, cache or None, (k, v) [L, B, K, T, H] if return_kv else None).
        """
        cfg = self.config
        cos, sin = rope.cos_sin(positions_BT, rope.inv_freq_table(cfg), rope_index_B)
        h = nn.with_logical_constraint(embeds_BTD.astype(self.dtype), (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))
        ck, cv = (cache.k, cache.v) if cache is not None else (None, None)
        layer_ids = jnp.arange(cfg.num_layers)
        (h, ck, cv), kv = self.layers((h, ck, cv), layer_ids, positions_BT, cos, sin, mask_BTS, write_B)
        return self.norm(h), (KVCache(ck, cv) if cache is not None else None), kv
