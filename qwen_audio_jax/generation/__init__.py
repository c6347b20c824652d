"""Generation: the continuous-batching engine, its jitted steps (prefill, insert, decode), sampling.

from qwen_audio_jax.generation import Engine, GenerationOptions
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Engine": "qwen_audio_jax.generation.engine",
        "EngineRequest": "qwen_audio_jax.generation.engine",
        "GenerationOutput": "qwen_audio_jax.generation.engine",
        "ListSource": "qwen_audio_jax.generation.engine",
        "GenerationOptions": "qwen_audio_jax.generation.options",
        "SamplingParams": "qwen_audio_jax.generation.sampling",
        "prefill": "qwen_audio_jax.generation.steps",
        "insert": "qwen_audio_jax.generation.steps",
        "decode": "qwen_audio_jax.generation.steps",
    },
)
