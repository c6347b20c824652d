"""The `eval` job: a benchmark manifest -> generations with the task's reference prompt -> the official scores.

    summary = evaluate("asr", "librispeech.jsonl", "out/", model=load(...))    # generate, then score
    summary = evaluate("asr", "librispeech.jsonl", "out/", predictions="results.jsonl")   # score only

Generation goes through the normal `generate` driver into OUT/predictions.jsonl (resumable), greedy with the
official decoding settings (max_new_tokens 256, min_new_tokens 1). Every request is generated as it would be
alone (continuous batching: no neighbour shifts a row), so the scores are identical at every batch size.
Scoring is qwen_audio_jax/eval (docs/eval.md): the official normalisers, WER per source, sacrebleu, accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qwen_audio_jax.checkpoint.locks import check_not_in_use
from qwen_audio_jax.checkpoint.safe_write import (
    DIR_LOCK,
    check_sources,
    is_ours,
    prepare_work_dir,
    release_work_dir,
)
from qwen_audio_jax.choices import QWEN2_AUDIO, QWEN_AUDIO_V1
from qwen_audio_jax.errors import ConfigError, OutputError
from qwen_audio_jax.eval.manifest import ManifestEntry, read_manifest
from qwen_audio_jax.eval.report import format_table, read_predictions, write_outputs
from qwen_audio_jax.eval.scoring import score_predictions
from qwen_audio_jax.generation.engine import EngineOptions
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.jobs.driver import run_file
from qwen_audio_jax.jobs.generate import GenerateJob
from qwen_audio_jax.jobs.tasks import AUDIO

# The official evaluation's decoding (docs/reference.md §9).
EVAL_OPTIONS = GenerationOptions(max_new_tokens=256, min_new_tokens=1)
PREDICTIONS = "predictions.jsonl"
REQUESTS = "requests.jsonl"
SCORES = ("metrics.json", "errors.jsonl")  # what scoring writes; generating also writes REQUESTS and PREDICTIONS


def check_output(manifest: str | Path, output_dir: str | Path, *, generating: bool, predictions=None) -> Path:
    """Checks eval's output directory before anything loads (OutputError, one line): not the same as, inside or a
    parent of the manifest; not in use by another run; and a file eval would write there (requests.jsonl,
    predictions.jsonl, metrics.json, errors.jsonl) is replaced only in a directory eval made (it carries the
    tool's marker), never in one of the user's. Returns it as an absolute path."""
    out = check_sources(output_dir, {"manifest": manifest}, "--output")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--output {out} is a file; pass a directory (eval writes several files into it).")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing} is a file, so --output {out} cannot be created; choose another --output.")
    if not os.access(existing, os.W_OK):
        raise OutputError(f"{existing} is not writable, so eval cannot write --output {out}; choose another --output.")
    if predictions is not None and Path(predictions).absolute() in {out / name for name in SCORES}:
        raise OutputError(f"--predictions {predictions} is a file eval writes into --output; choose another --output.")
    if out.is_dir() and not is_ours(out):
        names = (REQUESTS, PREDICTIONS, *SCORES) if generating else SCORES
        taken = [name for name in names if (out / name).exists()]
        if taken:
            raise OutputError(
                f"--output {out} holds a {taken[0]} that qwen-audio-jax did not write (the directory has no marker), "
                "so eval will not replace it; choose a new or empty directory."
            )
    check_not_in_use(out / DIR_LOCK, out)
    return out


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
    engine_options: EngineOptions = EngineOptions(),
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
    if (model is None) == (predictions is None):
        raise ConfigError("eval needs exactly one of --model (generate, then score) or --predictions (score).")
    out = check_output(manifest, output_dir, generating=model is not None, predictions=predictions)
    entries, problems = read_manifest(manifest, task)
    for p in problems:
        log(f"warning: {p.message}")
    out = prepare_work_dir(out, what="--output", kind="eval", sources={"manifest": manifest})
    try:  # the directory is locked (another eval into it is refused) until this returns
        if variant is None:
            variant = QWEN_AUDIO_V1 if model is not None and model.config.is_v1 else QWEN2_AUDIO
        if model is not None:
            summary = _generate(model, task, entries, out, options, engine_options, chat, resume, overwrite, progress)
            log(f"generated {summary['requests']} predictions ({summary['errors']} errors) -> {out / PREDICTIONS}")
            predictions = out / PREDICTIONS
        preds = read_predictions(predictions)
        result = score_predictions(task, entries, preds, variant=variant, problems=problems)
        try:
            write_outputs(result, out)
        except OSError as e:
            raise OutputError(
                f"cannot write the scores into {out} ({e.strerror}); free space, then run again."
            ) from None
        return {"metrics": result.to_json(), "table": format_table(result), "output": str(out)}
    finally:
        release_work_dir(out)


def _generate(model, task, entries, out: Path, options, engine_options, chat, resume, overwrite, progress) -> dict:
    """OUT/requests.jsonl from the manifest, then the generate driver into OUT/predictions.jsonl; its summary."""
    requests = out / REQUESTS
    try:
        with open(requests, "w", encoding="utf-8") as f:  # a line at a time: never the whole file in one string
            for entry in entries:
                f.write(json.dumps(request_for(entry, task, v1=model.config.is_v1), ensure_ascii=False) + "\n")
    except OSError as e:
        raise OutputError(f"cannot write {requests} ({e.strerror}); choose a writable --output.") from None
    job = GenerateJob(model, options, engine_options, chat=chat)
    return run_file(
        job, requests, out / PREDICTIONS, resume=resume, overwrite=overwrite or not resume, progress=progress
    )
