"""The text front end: tokenizers (both generations), chat templates, and the processor that turns requests
into model inputs.

    from qwen_audio_jax.text import Processor, load_tokenizer
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Processor": "qwen_audio_jax.text.processor",
        "PreparedRequest": "qwen_audio_jax.text.processor",
        "collate": "qwen_audio_jax.text.processor",
        "load_tokenizer": "qwen_audio_jax.text.tokenizer",
        "Qwen2AudioTokenizer": "qwen_audio_jax.text.tokenizer",
        "QwenAudioV1Tokenizer": "qwen_audio_jax.text.tokenizer",
        "render_chat": "qwen_audio_jax.text.chat_template",
    },
)
