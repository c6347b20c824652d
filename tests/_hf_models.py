"""Tiny random-weight transformers Qwen2-Audio models (the parity oracle) and their JAX twins."""

from __future__ import annotations

import dataclasses

import numpy as np

from qwen_audio_jax.config import ModelConfig  # noqa: F401
from qwen_audio_jax.conversion.hf_checkpoint import StateDictSource
from qwen_audio_jax.conversion.hf_config import from_hf_config
from qwen_audio_jax.conversion.hf_to_jax import params_from_hf

VOCAB = 151936 + 160  # real special ids (151643..151648) fit, room for a few more


@dataclasses.dataclass(frozen=True)
class TinySpec:
    name: str
    audio_d: int
    audio_layers: int
    audio_heads: int
    audio_ffn: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    inter: int
    vocab: int = VOCAB
    audio_token_id: int = 151646


MHA = TinySpec(
    "mha", audio_d=64, audio_layers=2, audio_heads=4, audio_ffn=128, hidden=64, layers=2, heads=4, kv_heads=4, inter=128
)
GQA = TinySpec(
    "gqa", audio_d=48, audio_layers=3, audio_heads=3, audio_ffn=96, hidden=96, layers=3, heads=6, kv_heads=2, inter=160
)
SPECS = (MHA, GQA)


def hf_config_dict(spec: TinySpec) -> dict:
    return dict(
        model_type="qwen2_audio",
        audio_token_index=spec.audio_token_id,
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            d_model=spec.audio_d,
            encoder_layers=spec.audio_layers,
            encoder_attention_heads=spec.audio_heads,
            encoder_ffn_dim=spec.audio_ffn,
            num_mel_bins=128,
            max_source_positions=1500,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=spec.vocab,
            hidden_size=spec.hidden,
            intermediate_size=spec.inter,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            rms_norm_eps=1e-5,
            max_position_embeddings=8192,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=151643,
            eos_token_id=151645,
        ),
    )


def build_hf_model(spec: TinySpec, seed: int = 0, dtype=None):
    """A transformers Qwen2AudioForConditionalGeneration with random weights (eager attention, eval mode)."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Qwen2AudioConfig(**{k: v for k, v in hf_config_dict(spec).items() if k != "model_type"})
    cfg._attn_implementation = "eager"
    model = Qwen2AudioForConditionalGeneration(cfg)
    # Random init leaves norms at 1/0 and biases at 0; perturb every tensor so parity checks exercise them all.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval()
    if dtype is not None:
        model = model.to(dtype)
    return model


def jax_twin(hf_model) -> tuple[ModelConfig, dict]:
    """Our config and params converted (in memory, through the real name map) from the HF model."""
    config = from_hf_config(hf_model.config.to_dict())
    params = params_from_hf(StateDictSource(hf_model.state_dict()), config)
    return config, params


def random_batch(
    rng: np.random.Generator,
    clip_seconds: list[list[float]],
    text_lens: list[int],
    pad_side: str = "left",
    audio_ids=(151646, 151647, 151648),
    text_vocab: int = 151643,
):
    """A processor-like batch: per request, random text ids around bos + N x <|AUDIO|> + eos per clip.
    audio_ids: (<|AUDIO|>, <|audio_bos|>, <|audio_eos|>); text ids are drawn below `text_vocab` (also the pad id).

    Returns tokens (B,T), attention_mask (B,T), mel (C,128,3000) random, mel_lengths (C,), frame mask (C,3000).
    """
    from qwen_audio_jax.audio.lengths import num_audio_tokens

    rows, mel_lengths = [], []
    for clips, n_text in zip(clip_seconds, text_lens):
        audio, bos, eos = audio_ids
        ids = list(rng.integers(0, text_vocab, size=n_text // 2))
        for sec in clips:
            length = int(np.ceil(sec * 16000 / 160))
            mel_lengths.append(length)
            ids += [bos] + [audio] * num_audio_tokens(length) + [eos]
            ids += list(rng.integers(0, text_vocab, size=3))
        ids += list(rng.integers(0, text_vocab, size=n_text - n_text // 2))
        rows.append(ids)
    t = max(len(r) for r in rows)
    tokens = np.full((len(rows), t), text_vocab, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        if pad_side == "left":
            tokens[i, t - len(r) :], mask[i, t - len(r) :] = r, 1
        else:
            tokens[i, : len(r)], mask[i, : len(r)] = r, 1
    c = len(mel_lengths)
    mel = rng.standard_normal((c, 128, 3000)).astype(np.float32)
    lengths = np.array(mel_lengths, np.int32)
    frame_mask = (np.arange(3000)[None] < lengths[:, None]).astype(np.int32)
    return tokens, mask, mel, lengths, frame_mask
