"""The audio encoder (Whisper style) and the projector into the decoder's width, for both generations.

    mel_CMA --conv1,gelu--> --conv2(stride 2),gelu--> + embed_positions --> L x pre-LN layer
            --AvgPool(2,2)--> LayerNorm --> projector (Linear)  ==>  feats_CPD, P = A // 4

Qwen2-Audio's reference always encodes A = 3000 frames with the keys past each clip's length masked. Because
only keys are masked, the valid outputs do not depend on frames beyond `mel_length + 1` (the conv stem's
receptive field reaches one frame past the last valid conv2 input), so callers may truncate the mel to any
bucket A >= mel_length + 2 (A a multiple of 4) and get the same valid rows (docs/decisions.md, "Audio encoder
cost"; proven in tests/test_generation.py).

Qwen-Audio v1 (`per_clip_length`) encodes a clip over its own length only: conv1 sees zeros past 2 x its conv2
length (the conv's own zero padding when the clip is encoded alone) and the padded positions are zeroed. Doing
that per clip makes every clip's output what it is alone, whatever it is batched with (docs/reference.md,
"Qwen-Audio v1 encoder").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwen_audio_jax.audio.lengths import encoder_lengths
from qwen_audio_jax.config import AudioEncoderConfig
from qwen_audio_jax.model import axes
from qwen_audio_jax.model.attention import MaskForm, attend
from qwen_audio_jax.model.layers import Dtype, LayerNorm, dense, param_with_axes
from qwen_audio_jax.model.lora import LoraLayer
from qwen_audio_jax.model.remat import remat_layer


class AudioAttention(nn.Module):
    config: AudioEncoderConfig
    dtype: Dtype
    param_dtype: Dtype
    attention: str = "xla"
    lora: LoraLayer | None = None  # an adapter on each linear layer (model/lora.py)

    @nn.compact
    def __call__(self, x_CTD, key_mask_CT):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, lora=self.lora)
        n, h = cfg.num_heads, cfg.head_dim
        c, t, _ = x_CTD.shape
        # The reference scales q before the matmul (q_proj(x) * h**-0.5) and then uses scaling 1.0.
        q = dense(cfg.d_model, (axes.AUDIO_EMBED, axes.AUDIO_HEADS), use_bias=True, name="q_proj", **kw)(x_CTD)
        q = q * (h**-0.5)
        k = dense(cfg.d_model, (axes.AUDIO_EMBED, axes.AUDIO_HEADS), use_bias=False, name="k_proj", **kw)(x_CTD)
        v = dense(cfg.d_model, (axes.AUDIO_EMBED, axes.AUDIO_HEADS), use_bias=True, name="v_proj", **kw)(x_CTD)
        mask_CTS = jnp.broadcast_to(key_mask_CT[:, None, :], (c, t, t))  # keys only; queries are never masked
        form = MaskForm(causal=False, kv_lengths=jnp.sum(key_mask_CT, axis=-1, dtype=jnp.int32))
        k_CNTH, v_CNTH = (x.reshape(c, t, n, h).swapaxes(1, 2) for x in (k, v))
        out = attend(q.reshape(c, t, n, h), k_CNTH, v_CNTH, mask_CTS, 1.0, self.attention, form)
        return dense(cfg.d_model, (axes.AUDIO_HEADS, axes.AUDIO_EMBED), use_bias=True, name="out_proj", **kw)(
            out.reshape(c, t, n * h)
        )


class AudioEncoderLayer(nn.Module):
    """Pre-LN Whisper encoder layer. Signature fits nn.scan: (carry, broadcast mask) -> (carry, None)."""

    config: AudioEncoderConfig
    dtype: Dtype
    param_dtype: Dtype
    attention: str = "xla"
    lora: LoraLayer | None = None

    @nn.compact
    def __call__(self, x_CTD, key_mask_CT):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ln = dict(eps=cfg.layer_norm_eps, param_dtype=self.param_dtype)
        h = LayerNorm(name="self_attn_layer_norm", **ln)(x_CTD)
        x_CTD = x_CTD + AudioAttention(cfg, name="self_attn", attention=self.attention, lora=self.lora, **kw)(
            h, key_mask_CT
        )
        h = LayerNorm(name="final_layer_norm", **ln)(x_CTD)
        h = dense(cfg.ffn_dim, (axes.AUDIO_EMBED, axes.AUDIO_MLP), use_bias=True, name="fc1", lora=self.lora, **kw)(h)
        h = jax.nn.gelu(h, approximate=False)
        h = dense(cfg.d_model, (axes.AUDIO_MLP, axes.AUDIO_EMBED), use_bias=True, name="fc2", lora=self.lora, **kw)(h)
        return x_CTD + h, None


class AudioEncoder(nn.Module):
    """mel_CMA [clips, mel bins, frames] + mel_lengths_C -> hidden_CPE [clips, A//4, d_model]."""

    config: AudioEncoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    attention: str = "xla"
    lora: LoraLayer | None = None

    @nn.compact
    def __call__(self, mel_CMA, mel_lengths_C):
        cfg = self.config
        c, m, a = mel_CMA.shape
        if a % 4 or a > cfg.max_mel_frames:
            raise ValueError(f"mel frames {a} must be a multiple of 4 and at most {cfg.max_mel_frames}")
        conv_kw = dict(
            kernel_size=(3,),
            padding=[(1, 1)],
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.AUDIO_EMBED,)),
        )
        after_conv, _ = encoder_lengths(mel_lengths_C)
        x = jnp.swapaxes(mel_CMA, 1, 2).astype(self.dtype)  # NCW (torch) -> NWC (flax)
        if cfg.per_clip_length:  # v1: conv1 sees zeros past the clip's own span, as when it is encoded alone
            x = jnp.where(jnp.arange(a)[None, :, None] < 2 * after_conv[:, None, None], x, 0)
        x = nn.Conv(
            cfg.d_model,
            strides=(1,),
            name="conv1",
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (axes.CONV_KERNEL, axes.MEL, axes.AUDIO_EMBED)
            ),
            **conv_kw,
        )(x)
        x = jax.nn.gelu(x, approximate=False)
        x = nn.Conv(
            cfg.d_model,
            strides=(2,),
            name="conv2",
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (axes.CONV_KERNEL, None, axes.AUDIO_EMBED)
            ),
            **conv_kw,
        )(x)
        x = jax.nn.gelu(x, approximate=False)
        t = a // 2
        # Stored in the checkpoint (requires_grad False in the reference); loaded, never regenerated.
        pos = param_with_axes(
            self,
            "embed_positions",
            nn.initializers.normal(0.02),
            (cfg.max_source_positions, cfg.d_model),
            (axes.AUDIO_POS, axes.AUDIO_EMBED),
            self.param_dtype,
        )
        x = x + pos[:t].astype(self.dtype)
        key_mask_CT = jnp.arange(t)[None, :] < after_conv[:, None]
        if cfg.per_clip_length:  # v1 zeroes the padded positions (they are masked as keys either way)
            x = jnp.where(key_mask_CT[:, :, None], x, 0)

        layer = remat_layer(AudioEncoderLayer, self.remat_policy)
        x, _ = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )(cfg, self.dtype, self.param_dtype, self.attention, self.lora, name="layers")(x, key_mask_CT)

        x = x.reshape(c, t // 2, 2, cfg.d_model).mean(axis=2, dtype=jnp.float32).astype(self.dtype)  # AvgPool1d(2, 2)
        return LayerNorm(eps=cfg.layer_norm_eps, param_dtype=self.param_dtype, name="layer_norm")(x)


class Projector(nn.Module):
    """multi_modal_projector: one Linear(d_model -> decoder width) with bias."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return dense(
            self.features,
            (axes.AUDIO_EMBED, axes.EMBED),
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="linear",
        )(x)
