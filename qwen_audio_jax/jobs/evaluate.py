"""The `eval` job: a benchmark manifest -> generations with the task's reference prompt -> the official scores.

    summary = evaluate("asr", "librispeech.jsonl", "out/", model=load(...))    # generate, then score
    summary = evaluate("asr", "librispeech.jsonl", "out/", predictions="results.jsonl")   # score only

Generation goes through the normal `generate` driver into OUT/predictions.jsonl (resumable), greedy with the
official decoding settings (max_new_tokens 256, min_new_tokens 1). Every request is generated as it would be
alone (continuous batching: no neighbour shifts a row), so the scores are identical at every batch size.
Scoring is qwen_audio_jax/eval (docs/eval.md): the official normalisers, WER per source, sacrebleu, accuracy.
"""

from __future__ import annotations

from pathlib import Path

from qwen_audio_jax.eval.manifest import ManifestEntry, read_manifest
from qwen_audio_jax.eval.report import format_table, read_predictions, write_outputs
from qwen_audio_jax.eval.scoring import score_predictions
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.jobs.driver import run_file
from qwen_audio_jax.jobs.generate import GenerateJob
from qwen_audio_jax.jobs.tasks import AUDIO

# The official evaluation's decoding (docs/reference.md §9).
EVAL_OPTIONS = GenerationOptions(max_new_tokens=256, min_new_tokens=1)
PREDICTIONS = "predictions.jsonl"
REQUESTS = "requests.jsonl"


def request_for(entry: ManifestEntry, task: str, *, v1: bool) -> dict:
    """The generate request of one manifest entry: its own prompt after the audio, or the task preset."""
    if entry.prompt is not None:
        if v1:
            return {"id": entry.id, "prompt": f"<audio>{entry.audio}</audio>{entry.prompt}"}
        return {"id": entry.id, "prompt": AUDIO + entry.prompt, "audio": [entry.audio]}
    request = {"id": entry.id, "task": task, "audio": entry.audio, "lang": entry.language}
    if entry.target_language:
        request["target"] = entry.target_language
    if entry.question:
        request["question"] = entry.question
    return request


def evaluate(
    task: str,
    manifest: str | Path,
    output_dir: str | Path,
    *,
    model=None,
    predictions=None,
    batch_size: int = 8,
    chat: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    variant: str | None = None,
    progress: bool = True,
    options: GenerationOptions = EVAL_OPTIONS,
    log=print,
) -> dict:
    """Scores `predictions` (a results JSONL) or generates them with `model` first. Writes OUT/metrics.json and
    OUT/errors.jsonl (and OUT/predictions.jsonl when generating); returns {"metrics": ..., "table": ...}."""
    import json

    from qwen_audio_jax.errors import ConfigError

    if (model is None) == (predictions is None):
        raise ConfigError("eval needs exactly one of --model (generate, then score) or --predictions (score).")
    entries, problems = read_manifest(manifest, task)
    for p in problems:
        log(f"warning: {p.message}")
    out = Path(output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if variant is None:
        variant = "qwen_audio_v1" if model is not None and model.config.is_v1 else "qwen2_audio"
    if model is not None:
        requests = out / REQUESTS
        requests.write_text(
            "".join(
                json.dumps(request_for(e, task, v1=model.config.is_v1), ensure_ascii=False) + "\n" for e in entries
            ),
            encoding="utf-8",
        )
        job = GenerateJob(model, options, batch_size=batch_size, chat=chat)
        summary = run_file(
            job, requests, out / PREDICTIONS, resume=resume, overwrite=overwrite or not resume, progress=progress
        )
        log(f"generated {summary['requests']} predictions ({summary['errors']} errors) -> {out / PREDICTIONS}")
        predictions = out / PREDICTIONS
    preds = read_predictions(predictions)
    result = score_predictions(task, entries, preds, variant=variant, problems=problems)
    write_outputs(result, out)
    table = format_table(result)
    return {"metrics": result.to_json(), "table": table, "output": str(out)}
