"""Scoring for the `eval` command: the official Qwen2-Audio / Qwen-Audio evaluation rules, reproduced exactly.

    from qwen_audio_jax.eval import read_manifest, read_predictions, score_predictions, write_outputs

Pure Python (no jax). See docs/eval.md for which official file each rule comes from.
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "TASKS": "qwen_audio_jax.eval.manifest",
        "ManifestEntry": "qwen_audio_jax.eval.manifest",
        "ManifestProblem": "qwen_audio_jax.eval.manifest",
        "read_manifest": "qwen_audio_jax.eval.manifest",
        "VARIANTS": "qwen_audio_jax.eval.normalize",
        "asr_tokens": "qwen_audio_jax.eval.normalize",
        "evaluation_tokenize": "qwen_audio_jax.eval.normalize",
        "remove_sp": "qwen_audio_jax.eval.normalize",
        "Predictions": "qwen_audio_jax.eval.report",
        "format_table": "qwen_audio_jax.eval.report",
        "read_predictions": "qwen_audio_jax.eval.report",
        "write_outputs": "qwen_audio_jax.eval.report",
        "EvalResult": "qwen_audio_jax.eval.scoring",
        "score_predictions": "qwen_audio_jax.eval.scoring",
    },
)
