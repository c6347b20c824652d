"""Stage 2: the initial (random-weight) Qwen2-Audio model dir of the demo model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's positional table (what Qwen2-Audio's released encoder stores in embed_positions)."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def model_config(tokenizer_dir: Path, dims: dict):
    from qwen_audio_jax.config import AudioEncoderConfig, DecoderConfig, ModelConfig
    from qwen_audio_jax.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    vocab = int(math.ceil(tok.vocab_size / 64) * 64)  # embedding rows: the tokenizer's ids, padded to 64
    return ModelConfig(
        audio=AudioEncoderConfig(
            num_mel_bins=128,
            d_model=dims["enc_d_model"],
            num_layers=dims["enc_layers"],
            num_heads=dims["enc_heads"],
            ffn_dim=dims["enc_ffn"],
            max_source_positions=1500,
        ),
        decoder=DecoderConfig(
            vocab_size=vocab,
            hidden_size=dims["dec_hidden"],
            intermediate_size=dims["dec_intermediate"],
            num_layers=dims["dec_layers"],
            num_heads=dims["dec_heads"],
            num_kv_heads=dims["dec_kv_heads"],
            head_dim=dims["dec_head_dim"],
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            max_position_embeddings=8192,
        ),
        audio_token_id=tok.audio_token_id,
        bos_token_id=tok.endoftext_id,
        eos_token_id=tok.im_end_id,
        pad_token_id=tok.pad_id,
    )


def build_initial_model(tokenizer_dir: Path, dst: Path, dims: dict, seed: int, pos_scale: float = 1.0) -> dict:
    import jax

    from qwen_audio_jax.audio.constants import preprocessor_config
    from qwen_audio_jax.checkpoint.model_dir import save_params, write_config
    from qwen_audio_jax.checkpoint.safe_write import atomic_directory
    from qwen_audio_jax.model.params import count_params, init_params

    dst = Path(dst).resolve()  # Orbax refuses relative checkpoint paths
    config = model_config(tokenizer_dir, dims)
    params = jax.device_get(init_params(config, jax.random.PRNGKey(seed)))
    tower = params["audio_tower"]
    pos = tower["embed_positions"]
    tower["embed_positions"] = pos_scale * sinusoids(*pos.shape)
    # He-scaled conv stem: with the default normal(0.02) the stem's output is ~50x smaller than the positional
    # table at init, so every clip looks the same to the decoder (measured: across-clip / positional variance
    # of the projected features 0.003) and SFT spends hundreds of steps before the audio path carries anything.
    for name in ("conv1", "conv2"):
        k = tower[name]["kernel"]  # [width, in, out]
        tower[name]["kernel"] = (k * (np.sqrt(2.0 / (k.shape[0] * k.shape[1])) / 0.02)).astype(k.dtype)
    with atomic_directory(dst, "model", overwrite=True) as tmp:
        save_params(tmp, params)
        write_config(tmp, config, "float32")
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json"):
            shutil.copy2(tokenizer_dir / name, tmp / name)
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(128), indent=2) + "\n")
        gen = {
            "bos_token_id": config.bos_token_id,
            "eos_token_id": [config.eos_token_id, config.bos_token_id],
            "pad_token_id": config.pad_token_id,
            "do_sample": False,
        }
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    trainable = count_params(params) - pos.size
    return {"config": config.to_dict(), "params": count_params(params), "params_trainable": int(trainable)}
