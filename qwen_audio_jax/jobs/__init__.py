"""Batch jobs over request files: one driver (file in and out, resume, errors, multi-host), the input pipeline,
and the generate / score / eval jobs.

    from qwen_audio_jax.jobs import GenerateJob, run_file
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "run_file": "qwen_audio_jax.jobs.driver",
        "run_list": "qwen_audio_jax.jobs.driver",
        "GenerateJob": "qwen_audio_jax.jobs.generate",
        "ScoreJob": "qwen_audio_jax.jobs.score",
        "evaluate": "qwen_audio_jax.jobs.evaluate",
        "TASKS": "qwen_audio_jax.jobs.tasks",
    },
)
