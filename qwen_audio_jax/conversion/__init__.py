"""Checkpoint conversion: Hugging Face (Qwen2-Audio, Qwen-Audio v1) <-> our Orbax model directories.

from qwen_audio_jax.conversion import convert, export_hf
convert("hf/Qwen2-Audio-7B-Instruct", "models/qwen2-audio-7b-instruct")     # lossless by default
export_hf("runs/a/model", "hf/my-finetune")
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "convert": "qwen_audio_jax.conversion.hf_to_jax",
        "params_from_hf": "qwen_audio_jax.conversion.hf_to_jax",
        "export_hf": "qwen_audio_jax.conversion.jax_to_hf",
        "HFCheckpoint": "qwen_audio_jax.conversion.hf_checkpoint",
        "StateDictSource": "qwen_audio_jax.conversion.hf_checkpoint",
        "from_hf_config": "qwen_audio_jax.conversion.hf_config",
        "to_hf_config": "qwen_audio_jax.conversion.hf_config",
    },
)
