"""Qwen2AudioForConditionalGeneration in linen: audio tower -> projector -> merge into <|AUDIO|> slots -> decoder.

Param tree (mirrors the Hugging Face names, so the converter's name map is mechanical):
    audio_tower/{conv1,conv2,embed_positions,layers/...,layer_norm}
    multi_modal_projector/linear
    language_model/{embed_tokens,layers/...,norm}
    lm_head
Entry points are methods used through `model.apply(params, ..., method=...)`; the jitted steps that call them
live in `generation/` and `training/`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.model.audio_encoder import AudioEncoder, Projector, conv_output_lengths
from qwen_audio_jax.model.decoder import Decoder, KVCache, causal_mask, positions_from_mask
from qwen_audio_jax.model.layers import Dtype, dense
from qwen_audio_jax.sharding import axes as ax


def merge_audio_features(
    embeds_BTD: jax.Array, tokens_BT: jax.Array, feats_CPD: jax.Array, lengths_C: jax.Array, audio_token_id: int
) -> jax.Array:
    """Writes clip c's first lengths_C[c] feature rows into the <|AUDIO|> slots, in row-major (batch, position)
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


class Qwen2AudioForConditionalGeneration(nn.Module):
    config: ModelConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat_policy: str = "none"

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.audio_tower = AudioEncoder(cfg.audio, remat_policy=self.remat_policy, **kw)
        self.multi_modal_projector = Projector(cfg.decoder.hidden_size, **kw)
        self.language_model = Decoder(cfg.decoder, remat_policy=self.remat_policy, **kw)
        self.lm_head = dense(cfg.decoder.vocab_size, (ax.EMBED, ax.VOCAB), use_bias=False, **kw, name=None)

    def encode_audio(self, mel_CMA, mel_lengths_C):
        """mel_CMA [C, M, A] (A a multiple of 4, A >= length + 2 or 3000) -> (feats_CPD, lengths_C), P = A // 4."""
        feats = self.multi_modal_projector(self.audio_tower(mel_CMA, mel_lengths_C))
        _, n_tokens = conv_output_lengths(mel_lengths_C)
        return feats, n_tokens

    def embed(self, tokens_BT, mel_CMA=None, mel_lengths_C=None, clip_repeats: int = 1,
              frozen_encoder: bool = False, frozen_projector: bool = False):  # fmt: skip
        """Token embeddings with each clip's projected frames scattered into its <|AUDIO|> slots.

        clip_repeats: the rows hold the clips' slots that many times over (DPO: chosen rows, then rejected rows
        with the same prompts), so each clip is encoded once and its features reused.
        frozen_encoder / frozen_projector: stop gradients there (no backward pass through a frozen tower).
        """
        embeds = self.language_model.embed(tokens_BT)
        if mel_CMA is None:
            return embeds
        hidden = self.audio_tower(mel_CMA, mel_lengths_C)
        if frozen_encoder:
            hidden = jax.lax.stop_gradient(hidden)
        feats = self.multi_modal_projector(hidden)
        if frozen_projector:
            feats = jax.lax.stop_gradient(feats)
        _, n_tokens = conv_output_lengths(mel_lengths_C)
        if clip_repeats > 1:
            feats = jnp.concatenate([feats] * clip_repeats, axis=0)
            n_tokens = jnp.concatenate([n_tokens] * clip_repeats, axis=0)
        return merge_audio_features(embeds, tokens_BT, feats, n_tokens, self.config.audio_token_id)

    def decode(self, embeds_BTD, positions_BT, mask_BTS, cache: KVCache | None = None, cache_index=0):
        """Decoder over embeddings; see `Decoder.__call__` for the cache modes. Returns (hidden_BTD, cache)."""
        return self.language_model(embeds_BTD, positions_BT, mask_BTS, cache, cache_index)

    def logits(self, hidden_BTD):
        """lm_head; logits in fp32 (log-probs and sampling need them there)."""
        return self.lm_head(hidden_BTD).astype(jnp.float32)

    def __call__(self, tokens_BT, attention_mask_BT, mel_CMA=None, mel_lengths_C=None):
        """Full forward without a cache (training, scoring, parity): logits_BTV in fp32."""
        embeds = self.embed(tokens_BT, mel_CMA, mel_lengths_C)
        positions = positions_from_mask(attention_mask_BT)
        slots = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
        hidden, _ = self.decode(embeds, positions, causal_mask(attention_mask_BT, slots))
        return self.logits(hidden)
