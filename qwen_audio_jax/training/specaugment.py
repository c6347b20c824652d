"""SpecAugment on the log-mel features, inside the jitted train step (never at scoring or inference).

Qwen-Audio trains with the LibriSpeech Basic policy (Park et al. 2019): two frequency masks of up to F = 27
bins and two time masks of up to T = 100 frames (time masks may cover the whole clip, p = 1). Each mask's
width is uniform in [0, max] and its start uniform over the positions where it fits; time masks fall inside the
clip's own valid frames, so padding never changes where they land. Masked values are set to 0, as transformers'
Whisper `_mask_input_features` does. Draws come from the step's RNG (seeded, saved with every checkpoint), so
a resumed run sees exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from qwen_audio_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    spec_augment: bool = False
    freq_masks: int = 2
    freq_width: int = 27  # F: bins
    time_masks: int = 2
    time_width: int = 100  # T: frames

    def __post_init__(self):
        if min(self.freq_masks, self.freq_width, self.time_masks, self.time_width) < 0:
            raise ConfigError("augment: mask counts and widths must be >= 0.")


def _band(key, size_C, max_width: int, positions: int):
    """(start, width) per clip: width ~ U{0..min(max_width, size)}, start ~ U{0..size - width}."""
    kw, ks = jax.random.split(key)
    cap = jnp.minimum(max_width, size_C)
    width = jnp.floor(jax.random.uniform(kw, size_C.shape) * (cap + 1)).astype(jnp.int32)
    width = jnp.minimum(width, cap)
    start = jnp.floor(jax.random.uniform(ks, size_C.shape) * (size_C - width + 1)).astype(jnp.int32)
    start = jnp.minimum(start, jnp.maximum(size_C - width, 0))
    idx = jnp.arange(positions)[None, :]
    return (idx >= start[:, None]) & (idx < (start + width)[:, None])  # [C, positions]


def spec_augment(mel_CMF: jax.Array, lengths_C: jax.Array, key: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """mel [C, M, F] (F padded frames), lengths [C] valid frames -> the masked mel (same shape and dtype)."""
    c, m, f = mel_CMF.shape
    masked = jnp.zeros((c, m, f), bool)
    keys = jax.random.split(key, cfg.freq_masks + cfg.time_masks + 1)
    bins = jnp.full((c,), m, jnp.int32)
    for i in range(cfg.freq_masks):
        masked |= _band(keys[i], bins, cfg.freq_width, m)[:, :, None]
    frames = jnp.minimum(lengths_C.astype(jnp.int32), f)
    for i in range(cfg.time_masks):
        masked |= _band(keys[cfg.freq_masks + i], frames, cfg.time_width, f)[:, None, :]
    return jnp.where(masked, jnp.zeros((), mel_CMF.dtype), mel_CMF)
