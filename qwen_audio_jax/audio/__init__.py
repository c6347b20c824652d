"""The audio front end: loading any format at any rate (Qwen-Audio v1 files through FFmpeg, as its reference
does), Whisper log-mel features, the clip length formulas.

from qwen_audio_jax.audio import load_audio, log_mel_numpy
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "load_audio": "qwen_audio_jax.audio.load",
        "load_audio_v1": "qwen_audio_jax.audio.load_v1",
        "split_long_audio": "qwen_audio_jax.audio.load",
        "log_mel_numpy": "qwen_audio_jax.audio.features",
        "log_mel_jax": "qwen_audio_jax.audio.features",
        "mel_length": "qwen_audio_jax.audio.features",
        "encoder_lengths": "qwen_audio_jax.audio.lengths",
        "num_audio_tokens": "qwen_audio_jax.audio.lengths",
    },
)
