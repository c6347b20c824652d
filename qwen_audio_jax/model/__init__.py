"""The model: one linen module for both generations, its param trees, and sequence log-probs.

from qwen_audio_jax.model import build_module, init_params, abstract_params
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "AudioLanguageModel": "qwen_audio_jax.model.audio_lm",
        "build_module": "qwen_audio_jax.model.params",
        "init_params": "qwen_audio_jax.model.params",
        "abstract_params": "qwen_audio_jax.model.params",
        "logical_axes": "qwen_audio_jax.model.params",
        "count_params": "qwen_audio_jax.model.params",
        "param_group": "qwen_audio_jax.model.params",
        "KVCache": "qwen_audio_jax.model.decoder",
        "completion_logprobs": "qwen_audio_jax.model.logprobs",
        "CompletionLogprobs": "qwen_audio_jax.model.logprobs",
    },
)
