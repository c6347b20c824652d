"""The decoder (Qwen2, and Qwen-7B in the same layout) with a paged KV cache (model/paged.py).

The same scanned layers run in one of three cache modes (a static attribute of the module):
  * "none" (training, scoring, parity): causal self-attention over the T given tokens, no cache;
  * "prefill" (a prompt's first chunk): the same attention over the chunk's own tokens (cuDNN flash attention
    on GPU), and every layer's keys/values are written into the row's pages;
  * "extend" (a prompt's later chunks, and decode with T = 1): the new keys/values are written into the row's
    pages first, then the queries attend over the row's pages up to their own positions.
The page pool lives in the scan *carry* and each layer writes only its new entries (a scatter), so a step reads
the pages it needs and never copies the cache.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwen_audio_jax.config import DecoderConfig
from qwen_audio_jax.model import axes, paged, rope
from qwen_audio_jax.model.attention import attend
from qwen_audio_jax.model.layers import Dtype, RMSNorm, dense
from qwen_audio_jax.model.lora import FusedLora, LoraSpec
from qwen_audio_jax.model.remat import remat_layer

CACHE_MODES = ("none", "prefill", "extend")


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
    """q/k/v with bias, o without; RoPE (+ v1's logn query scaling); grouped KV heads; the paged cache."""

    config: DecoderConfig
    dtype: Dtype
    param_dtype: Dtype
    attention: str = "xla"
    inference_scaling: bool = True  # v1's logn query scaling (the reference applies it at inference only)
    cache_mode: str = "none"
    quantized: bool = False
    lora: LoraSpec | None = None  # adapters on the targeted projections (model/lora.py)

    @nn.compact
    def __call__(self, x_BTD, positions_BT, cos_BTH, sin_BTH, mask_BTS, form, pool, layer_index, refs):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, quantized=self.quantized)
        ad = (lambda name: self.lora.decoder_layer(name)) if self.lora else (lambda name: None)  # noqa: E731
        b, t, _ = x_BTD.shape
        n, k, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = dense(n * hd, (axes.EMBED, axes.Q_HEADS), use_bias=True, name="q_proj", lora=ad("q_proj"), **kw)(x_BTD)
        kk = dense(k * hd, (axes.EMBED, axes.KV_HEADS), use_bias=True, name="k_proj", lora=ad("k_proj"), **kw)(x_BTD)
        v = dense(k * hd, (axes.EMBED, axes.KV_HEADS), use_bias=True, name="v_proj", lora=ad("v_proj"), **kw)(x_BTD)
        if ad("c_attn") is not None:  # v1's fused c_attn: one adapter over q | k | v
            fused = FusedLora(
                (n * hd, k * hd, k * hd), (axes.EMBED, axes.Q_HEADS), ad("c_attn"), self.dtype, name="c_attn"
            )
            dq, dk, dv = fused(x_BTD)
            q, kk, v = q + dq, kk + dk, v + dv
        q = q.reshape(b, t, n, hd)
        q = rope.apply(q, cos_BTH, sin_BTH)
        if self.inference_scaling:
            q = rope.logn_scale(q, positions_BT, cfg)
        kk = rope.apply(kk.reshape(b, t, k, hd), cos_BTH, sin_BTH)

        keys, values = kk.swapaxes(1, 2), v.reshape(b, t, k, hd).swapaxes(1, 2)  # [B, K, T, H]
        if self.cache_mode == "extend":
            pool = paged.write(pool, layer_index, refs, keys, values)
            num_keys = refs.start + jnp.sum(refs.live, axis=-1, dtype=jnp.int32)
            a = paged.attend_pages(q, pool, layer_index, refs, num_keys, hd**-0.5)
        else:
            a = attend(q, keys, values, mask_BTS, hd**-0.5, self.attention, form)
            if self.cache_mode == "prefill":
                pool = paged.write(pool, layer_index, refs, keys, values)
        out = dense(
            cfg.hidden_size, (axes.Q_HEADS, axes.EMBED), use_bias=False, name="o_proj", lora=ad("o_proj"), **kw
        )(a.reshape(b, t, n * hd))
        return out, pool


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Qwen-7B's `c_proj(w1(x) * silu(w2(x)))` is the same with w2 = gate."""

    config: DecoderConfig
    dtype: Dtype
    param_dtype: Dtype
    quantized: bool = False
    lora: LoraSpec | None = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False, quantized=self.quantized)
        ad = (lambda name: self.lora.decoder_layer(name)) if self.lora else (lambda name: None)  # noqa: E731
        gate = dense(cfg.intermediate_size, (axes.EMBED, axes.MLP), name="gate_proj", lora=ad("gate_proj"), **kw)(x)
        up = dense(cfg.intermediate_size, (axes.EMBED, axes.MLP), name="up_proj", lora=ad("up_proj"), **kw)(x)
        down = dense(cfg.hidden_size, (axes.MLP, axes.EMBED), name="down_proj", lora=ad("down_proj"), **kw)
        return down(jax.nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-RMSNorm layer. Scan signature: (carry=(h, pool), layer_index, *broadcast) -> (carry, None)."""

    config: DecoderConfig
    dtype: Dtype
    param_dtype: Dtype
    attention: str = "xla"
    inference_scaling: bool = True
    cache_mode: str = "none"
    quantized: bool = False
    lora: LoraSpec | None = None

    @nn.compact
    def __call__(self, carry, layer_index, positions_BT, cos_BTH, sin_BTH, mask_BTS, form, refs):
        h_BTD, pool = carry
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, quantized=self.quantized)
        x = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="input_layernorm")(h_BTD)
        a, pool = Attention(
            cfg,
            name="self_attn",
            attention=self.attention,
            inference_scaling=self.inference_scaling,
            cache_mode=self.cache_mode,
            lora=self.lora,
            **kw,
        )(x, positions_BT, cos_BTH, sin_BTH, mask_BTS, form, pool, layer_index, refs)
        h_BTD = h_BTD + a
        x = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="post_attention_layernorm")(h_BTD)
        h_BTD = h_BTD + MLP(cfg, name="mlp", lora=self.lora, **kw)(x)
        h_BTD = nn.with_logical_constraint(h_BTD, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))
        return (h_BTD, pool), None


class Decoder(nn.Module):
    """embed_tokens + L scanned layers + final norm. `embed` is separate so audio can be merged first."""

    config: DecoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    attention: str = "xla"
    inference_scaling: bool = True  # v1's logn attention (training runs without it, as the reference does)
    cache_mode: str = "none"  # "none" | "prefill" | "extend" (module docstring)
    quantized: bool = False  # int8 kernels in every linear layer (model/quant.py)
    lora: LoraSpec | None = None  # LoRA adapters (model/lora.py)

    def setup(self):
        cfg = self.config
        if self.cache_mode not in CACHE_MODES:
            raise ValueError(f"cache_mode {self.cache_mode!r} is not one of {CACHE_MODES}")
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
            split_rngs={"params": True, "dropout": True},
            in_axes=(0,) + (nn.broadcast,) * 6,
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )(
            cfg,
            self.dtype,
            self.param_dtype,
            self.attention,
            self.inference_scaling,
            self.cache_mode,
            self.quantized,
            self.lora,
        )

    def embed(self, tokens_BT):
        return self.embed_tokens(tokens_BT)

    def __call__(self, embeds_BTD, positions_BT, mask_BTS=None, *, form=None, rope_index_B=None, pool=None, refs=None):
        """Runs the layers over embeddings at `positions_BT`. mask_BTS: [B, T, T] (modes "none", "prefill");
        form: its structure when rows are right-padded (model/attention.py `MaskForm`, for cuDNN).

        rope_index_B: each row's RoPE table row (v1's NTK alpha; None: plain RoPE). pool + refs (modes "prefill"
        and "extend"): the page pool and where each row's tokens go (model/paged.py).
        Returns (hidden_BTD after the final norm, the updated pool or None).
        """
        cfg = self.config
        cos, sin = rope.cos_sin(positions_BT, rope.inv_freq_table(cfg), rope_index_B)
        h = nn.with_logical_constraint(embeds_BTD.astype(self.dtype), (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))
        layer_ids = jnp.arange(cfg.num_layers)
        (h, pool), _ = self.layers((h, pool), layer_ids, positions_BT, cos, sin, mask_BTS, form, refs)
        return self.norm(h), pool
