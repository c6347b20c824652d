"""The Whisper front end's constants (docs/reference.md §2), one source for loading, features and model dirs.

Plain numbers only (no jax), so that audio loading and the CLI's start-up never import an array library.
"""

from __future__ import annotations

SAMPLE_RATE = 16000  # Hz: every clip is resampled to this (the reference's librosa.load(path, sr=16000))
N_FFT = 400  # 25 ms Hann window
HOP = 160  # 10 ms: one mel frame per 160 samples
N_SAMPLES = 480000  # 30 s: every clip is padded (or truncated) to this, as the reference does
N_FRAMES = N_SAMPLES // HOP  # 3000 mel frames per clip

__all__ = ["SAMPLE_RATE", "N_FFT", "HOP", "N_SAMPLES", "N_FRAMES", "preprocessor_config"]


def preprocessor_config(n_mels: int) -> dict:
    """The `preprocessor_config.json` of a Hugging Face checkpoint with `n_mels` bins (128: Qwen2-Audio, 80: v1)."""
    return {
        "chunk_length": N_SAMPLES // SAMPLE_RATE,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": int(n_mels),
        "hop_length": HOP,
        "n_fft": N_FFT,
        "n_samples": N_SAMPLES,
        "nb_max_frames": N_FRAMES,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "Qwen2AudioProcessor",
        "return_attention_mask": True,
        "sampling_rate": SAMPLE_RATE,
    }
