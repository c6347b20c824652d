"""Training: DPO and SFT from a run config, resumable and sharded.

from qwen_audio_jax.training import TrainingRun, load_run_config, train
summary = train(TrainingRun.build(load_run_config("configs/dpo_tiny.yaml", ["model=...", "data.train=..."])))
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "TrainingRun": "qwen_audio_jax.training.run",
        "train": "qwen_audio_jax.training.loop",
        "precompute_reference": "qwen_audio_jax.training.loop",
        "load_run_config": "qwen_audio_jax.training.run_config",
        "RunConfig": "qwen_audio_jax.training.run_config",
        "train_step": "qwen_audio_jax.training.step",
        "preference_loss": "qwen_audio_jax.training.loss",
        "spec_augment": "qwen_audio_jax.training.specaugment",
    },
)
