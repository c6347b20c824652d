"""qwen-audio-jax: Qwen2-Audio and Qwen-Audio (v1) in JAX/Flax. Convert checkpoints, batch inference, DPO/SFT.

    import qwen_audio_jax as qaj
    model = qaj.load("models/qwen2-audio-7b-instruct")
    results = qaj.generate(model, requests, qaj.GenerationOptions(max_new_tokens=64))

Curated entry points; the subpackages export their own (`qwen_audio_jax.conversion`, `.model`, `.generation`,
`.training`, `.eval`, ...). Names are imported on first use, so `import qwen_audio_jax` (and the command line's
`--help`) does not pay for importing jax.
"""

from qwen_audio_jax._exports import lazy_exports

__version__ = "0.2.0"

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "load": "qwen_audio_jax.api",
        "generate": "qwen_audio_jax.api",
        "score": "qwen_audio_jax.api",
        "LoadedModel": "qwen_audio_jax.api",
        "GenerationOptions": "qwen_audio_jax.generation.options",
        "ModelConfig": "qwen_audio_jax.config",
        "qwen2_audio_7b": "qwen_audio_jax.config",
        "qwen_audio_7b": "qwen_audio_jax.config",
        "tiny": "qwen_audio_jax.config",
        "QwenAudioError": "qwen_audio_jax.errors",
    },
)
