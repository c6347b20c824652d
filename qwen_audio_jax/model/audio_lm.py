"""The audio-language model as one linen module: audio tower -> projector -> merge into the audio slots ->
decoder -> lm_head. Both generations (Qwen2-Audio, Qwen-Audio v1) are this module with different configs.

Param tree (mirrors the Hugging Face Qwen2-Audio names, so the converter's name map is mechanical):
    audio_tower/{conv1,conv2,embed_positions,layers/...,layer_norm}
    multi_modal_projector/linear
    language_model/{embed_tokens,layers/...,norm}
    lm_head
    audio_bos_eos_token          (v1 only: the learned vectors at the <audio> / </audio> positions)
Entry points are methods used through `module.apply({"params": params}, ..., method=...)`; the jitted steps
that call them live in `generation/` and `training/`. `forward` is the one cache-free forward pass: training,
scoring, parity tests and prefill all go through it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwen_audio_jax.audio.lengths import encoder_lengths
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.model import axes
from qwen_audio_jax.model.audio_encoder import AudioEncoder, Projector
from qwen_audio_jax.model.decoder import Decoder, KVCache, causal_mask, positions_from_mask
from qwen_audio_jax.model.layers import Dtype, dense, param_with_axes


def merge_audio_features(
    embeds_BTD: jax.Array, tokens_BT: jax.Array, feats_CPD: jax.Array, lengths_C: jax.Array, audio_token_id: int
) -> jax.Array:
    """Writes clip c's first lengths_C[c] feature rows into the audio slots, in row-major (batch, position)
    order, exactly like the reference's `inputs_embeds[input_ids == audio_token] = concat_c feats[c, :n_c]`.

    Static shapes: the k-th audio slot (counting row-major) takes row k - start[c] of the clip c whose
    [start, end) range holds k. The processor guarantees sum(lengths) == number of audio slots.
    """
    b, t, d = embeds_BTD.shape
    c, p, _ = feats_CPD.shape
    is_audio = (tokens_BT == audio_token_id).reshape(-1)
    slot = jnp.cumsum(is_audio.astype(jnp.int32)) - 1  # index among audio slots
    ends = jnp.cumsum(lengths_C.astype(jnp.int32))
    clip = jnp.clip(jnp.searchsorted(ends, slot, side="right"), 0, c - 1)
    frame = jnp.clip(slot - (ends - lengths_C)[clip], 0, p - 1)
    gathered = feats_CPD[clip, frame].astype(embeds_BTD.dtype)
    merged = jnp.where(is_audio[:, None], gathered, embeds_BTD.reshape(b * t, d))
    return merged.reshape(b, t, d)


class AudioLanguageModel(nn.Module):
    config: ModelConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    attention: str = "xla"  # a resolved model/attention.py implementation
    return_kv: bool = False  # prefill mode: `forward` also returns every layer's new keys and values
    # v1's dynamic NTK and logn attention are inference-time features: the trainer builds the module without them.
    inference_scaling: bool = True

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.audio_tower = AudioEncoder(cfg.audio, remat_policy=self.remat_policy, attention=self.attention, **kw)
        self.multi_modal_projector = Projector(cfg.decoder.hidden_size, **kw)
        self.language_model = Decoder(
            cfg.decoder,
            remat_policy=self.remat_policy,
            attention=self.attention,
            return_kv=self.return_kv,
            inference_scaling=self.inference_scaling,
            **kw,
        )
        self.lm_head = dense(cfg.decoder.vocab_size, (axes.EMBED, axes.VOCAB), use_bias=False, **kw, name=None)
        if cfg.is_v1:
            self.audio_bos_eos_token = param_with_axes(
                self,
                "audio_bos_eos_token",
                nn.initializers.normal(0.02),
                (2, cfg.decoder.hidden_size),
                (None, axes.EMBED),
                self.param_dtype,
            )

    def encode_audio(self, mel_CMA, mel_lengths_C):
        """mel_CMA [C, M, A] (A a multiple of 4, A >= length + 2 or 3000) -> (feats_CPD, lengths_C), P = A // 4."""
        feats = self.multi_modal_projector(self.audio_tower(mel_CMA, mel_lengths_C))
        return feats, encoder_lengths(mel_lengths_C)[1]

    def embed(
        self,
        tokens_BT,
        mel_CMA=None,
        mel_lengths_C=None,
        clip_repeats: int = 1,
        frozen_encoder: bool = False,
        frozen_projector: bool = False,
    ):
        """Token embeddings with each clip's projected frames scattered into its audio slots (and, for v1, the
        learned bos/eos vectors at the <audio> / </audio> positions, which overwrite those embeddings).

        clip_repeats: the rows hold the clips' slots that many times over (DPO: chosen rows, then rejected rows
        with the same prompts), so each clip is encoded once and its features reused.
        frozen_encoder / frozen_projector: stop gradients there (no backward pass through a frozen tower).
        """
        cfg = self.config
        embeds = self.language_model.embed(tokens_BT)
        if cfg.is_v1:
            delim = self.audio_bos_eos_token.astype(embeds.dtype)
            embeds = jnp.where((tokens_BT == cfg.audio_start_id)[..., None], delim[0], embeds)
            embeds = jnp.where((tokens_BT == cfg.audio_end_id)[..., None], delim[1], embeds)
        if mel_CMA is None:
            return embeds
        hidden = self.audio_tower(mel_CMA, mel_lengths_C)
        if frozen_encoder:
            hidden = jax.lax.stop_gradient(hidden)
        feats = self.multi_modal_projector(hidden)
        if frozen_projector:
            feats = jax.lax.stop_gradient(feats)
        n_tokens = encoder_lengths(mel_lengths_C)[1]
        if clip_repeats > 1:
            feats = jnp.concatenate([feats] * clip_repeats, axis=0)
            n_tokens = jnp.concatenate([n_tokens] * clip_repeats, axis=0)
        return merge_audio_features(embeds, tokens_BT, feats, n_tokens, cfg.audio_token_id)

    def forward(self, tokens_BT, mask_BT, mel_CMA=None, mel_lengths_C=None, rope_index_B=None, **embed_options):
        """The cache-free forward pass over a padded batch (positions from the mask, causal attention).

        Returns (hidden_BTD after the final norm, per-layer (k, v) [L, B, K, T, H] when return_kv, else None).
        """
        embeds = self.embed(tokens_BT, mel_CMA, mel_lengths_C, **embed_options)
        positions = positions_from_mask(mask_BT)
        hidden, _, kv = self.language_model(embeds, positions, causal_mask(mask_BT), rope_index_B=rope_index_B)
        return hidden, kv

    def decode_step(self, tokens_B, positions_B, key_mask_BS, cache: KVCache, write_B, rope_index_B=None):
        """One new token per slot: writes its keys/values at write_B[b], attends over the slot's valid entries
        (key_mask_BS). Returns (hidden_BD, cache)."""
        embeds = self.language_model.embed(tokens_B[:, None])
        hidden, cache, _ = self.language_model(
            embeds,
            positions_B[:, None],
            key_mask_BS[:, None, :],
            rope_index_B=rope_index_B,
            cache=cache,
            write_B=write_B,
        )
        return hidden[:, 0], cache

    def logits(self, hidden):
        """lm_head; logits in fp32 (log-probs and sampling need them there)."""
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(self, tokens_BT, attention_mask_BT, mel_CMA=None, mel_lengths_C=None):
        """Full forward without a cache (parity tests, init): logits_BTV in fp32."""
        hidden, _ = self.forward(tokens_BT, attention_mask_BT, mel_CMA, mel_lengths_C)
        return self.logits(hidden)
