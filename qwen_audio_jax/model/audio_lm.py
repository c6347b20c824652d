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
from qwen_audio_jax.model.attention import MaskForm
from qwen_audio_jax.model.audio_encoder import AudioEncoder, Projector
from qwen_audio_jax.model.decoder import Decoder, causal_mask, positions_from_mask
from qwen_audio_jax.model.layers import Dtype, dense, param_with_axes
from qwen_audio_jax.model.lora import LoraSpec


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
    # v1's dynamic NTK and logn attention are inference-time features: the trainer builds the module without them.
    inference_scaling: bool = True
    cache_mode: str = "none"  # the decoder's paged-cache mode (model/decoder.py): "none" | "prefill" | "extend"
    quantized: bool = False  # int8 decoder kernels and lm_head (model/quant.py)
    lora: LoraSpec | None = None  # LoRA adapters (model/lora.py); None: the base model (adapters switched off)

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.audio_tower = AudioEncoder(
            cfg.audio,
            remat_policy=self.remat_policy,
            attention=self.attention,
            lora=self.lora.audio_layer() if self.lora else None,
            **kw,
        )
        self.multi_modal_projector = Projector(cfg.decoder.hidden_size, **kw)
        self.language_model = Decoder(
            cfg.decoder,
            remat_policy=self.remat_policy,
            attention=self.attention,
            inference_scaling=self.inference_scaling,
            cache_mode=self.cache_mode,
            quantized=self.quantized,
            lora=self.lora,
            **kw,
        )
        self.lm_head = dense(
            cfg.decoder.vocab_size, (axes.EMBED, axes.VOCAB), use_bias=False, **kw, name=None, quantized=self.quantized
        )
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

    def forward(
        self,
        tokens_BT,
        mask_BT,
        mel_CMA=None,
        mel_lengths_C=None,
        rope_index_B=None,
        right_padded: bool = False,
        **embed_options,
    ):
        """The cache-free forward pass over a padded batch (positions from the mask, causal attention).
        right_padded: rows are right-padded, so attention may run as cuDNN's causal + lengths form.

        Returns (hidden_BTD after the final norm, None)."""
        embeds = self.embed(tokens_BT, mel_CMA, mel_lengths_C, **embed_options)
        return self.forward_embeds(embeds, mask_BT, rope_index_B, right_padded), None

    def forward_embeds(self, embeds_BTD, mask_BT, rope_index_B=None, right_padded: bool = False):
        """The decoder over given embeddings (audio already merged): hidden_BTD after the final norm."""
        positions = positions_from_mask(mask_BT)
        form = None
        if right_padded:
            lengths = jnp.sum(mask_BT, axis=-1, dtype=jnp.int32)
            form = MaskForm(causal=True, q_lengths=lengths, kv_lengths=lengths)
        hidden, _ = self.language_model(
            embeds_BTD, positions, causal_mask(mask_BT), form=form, rope_index_B=rope_index_B
        )
        return hidden

    def embed_buffered(self, tokens_BT, features_ND, audio_offset_B):
        """Token embeddings with the audio slots filled from a buffer of projected audio features: row b's k-th
        audio slot takes features_ND[audio_offset_B[b] + k] (the engine encodes each clip into the buffer in
        order, generation/steps.py `encode`). v1's learned bos/eos vectors as in `embed`."""
        embeds = self.embed(tokens_BT)
        is_audio = tokens_BT == self.config.audio_token_id
        index = audio_offset_B[:, None] + jnp.cumsum(is_audio, axis=-1, dtype=jnp.int32) - 1
        index = jnp.clip(index, 0, features_ND.shape[0] - 1)
        return jnp.where(is_audio[..., None], features_ND[index].astype(embeds.dtype), embeds)

    def prefill_chunk(self, tokens_RT, features_ND, audio_offset_R, rope_index_R, pool, refs):
        """One chunk of R prompts (row r: tokens start[r] .. start[r] + T - 1, right-padded; refs.live marks the
        real ones) into the page pool. Module built with cache_mode "prefill" (every start 0) or "extend".
        Returns (hidden_RTD, pool)."""
        embeds = self.embed_buffered(tokens_RT, features_ND, audio_offset_R)
        positions = refs.start[:, None] + jnp.arange(tokens_RT.shape[1])[None, :]
        mask = form = None
        if self.cache_mode == "prefill":
            mask = causal_mask(refs.live)
            lengths = jnp.sum(refs.live, axis=-1, dtype=jnp.int32)
            form = MaskForm(causal=True, q_lengths=lengths, kv_lengths=lengths)
        return self.language_model(embeds, positions, mask, form=form, rope_index_B=rope_index_R, pool=pool, refs=refs)

    def decode_step(self, tokens_B, rope_index_B, pool, refs):
        """One new token per slot at position refs.start[b] (cache_mode "extend"): written into the slot's pages,
        then attending over them. Returns (hidden_BD, pool)."""
        embeds = self.language_model.embed(tokens_B[:, None])
        hidden, pool = self.language_model(embeds, refs.start[:, None], rope_index_B=rope_index_B, pool=pool, refs=refs)
        return hidden[:, 0], pool

    def logits(self, hidden):
        """lm_head; logits in fp32 (log-probs and sampling need them there)."""
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(self, tokens_BT, attention_mask_BT, mel_CMA=None, mel_lengths_C=None):
        """Full forward without a cache (parity tests, init): logits_BTV in fp32."""
        hidden, _ = self.forward(tokens_BT, attention_mask_BT, mel_CMA, mel_lengths_C)
        return self.logits(hidden)
