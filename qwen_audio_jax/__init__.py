"""qwen-audio-jax: Qwen2-Audio in JAX/Flax. Convert checkpoints, run batch inference, train with DPO/SFT.

Curated entry points (see the README for the command line):
    load, generate, score             -- qwen_audio_jax.api
    GenerationOptions                 -- sampling and length settings
    ModelConfig, qwen2_audio_7b, tiny -- configs and presets
"""

from qwen_audio_jax.api import LoadedModel, generate, load, score
from qwen_audio_jax.config import ModelConfig, qwen2_audio_7b, tiny
from qwen_audio_jax.generation.engine import GenerationOptions

__all__ = ["load", "generate", "score", "LoadedModel", "GenerationOptions", "ModelConfig", "qwen2_audio_7b", "tiny"]
__version__ = "0.1.0"
