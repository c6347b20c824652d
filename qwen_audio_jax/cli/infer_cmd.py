"""`generate` and `score`: batch inference over request JSONL files (one driver: jobs/driver.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qwen_audio_jax.choices import SAMPLING_DEFAULTS
from qwen_audio_jax.cli.args import (
    add_adapter_flag,
    add_batch_size_flag,
    add_engine_flags,
    add_long_audio_flag,
    add_quantize_flag,
    add_runtime_flags,
    add_workers_flag,
    compute_dtype,
    engine_options,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    seed_int,
    start_runtime,
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="model dir written by `qwen-audio-jax convert` (or training; a LoRA run's OUTPUT/model runs on the "
        "base model it was trained on)",
    )
    p.add_argument("--input", required=True, help='request JSONL (one JSON object per line, each with an "id")')
    p.add_argument("--output", required=True, help="result JSONL (one line per request)")
    add_batch_size_flag(p, "decode slots (generate) or rows per step (score); rounded up to the mesh's batch axes")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run: keep finished lines, skip their ids"
    )
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="with --resume: also run again the requests whose result is an error",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    p.add_argument(
        "--ordered",
        action="store_true",
        help="lines come in completion order; with --ordered the file is rewritten in input order once every "
        "request is answered (an interrupted run keeps completion order and resumes as usual)",
    )
    add_long_audio_flag(p)
    add_workers_flag(p)
    p.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="task presets use chat turns (default: when the checkpoint is a chat model)",
    )
    p.add_argument("--no-chat", dest="chat", action="store_false")
    add_runtime_flags(p)
    add_quantize_flag(p)
    add_adapter_flag(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="batch inference: request JSONL -> result JSONL",
        description="Generates a reply for every request line with continuous batching; a bad "
        "request gets an error line and every other request is answered.",
    )
    _common(p)
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=SAMPLING_DEFAULTS["max_new_tokens"],
        help="token budget per request (a request line's own max_new_tokens wins; default: %(default)s)",
    )
    d = SAMPLING_DEFAULTS
    p.add_argument("--min-new-tokens", type=nonneg_int, default=d["min_new_tokens"], help="default: %(default)s")
    p.add_argument("--temperature", type=nonneg_float, default=d["temperature"], help="0 = greedy (default)")
    p.add_argument("--top-k", type=nonneg_int, default=d["top_k"], help="0 = off (default)")
    p.add_argument("--top-p", type=probability, default=d["top_p"], help="1.0 = off (default)")
    p.add_argument(
        "--repetition-penalty", type=positive_float, default=d["repetition_penalty"], help="1.0 = off (default)"
    )
    p.add_argument("--seed", type=seed_int, default=d["seed"], help="default: %(default)s")
    p.add_argument(
        "--stop-id",
        type=nonneg_int,
        action="append",
        default=None,
        help="extra stop token id (repeatable); the model's own stop ids always stop",
    )
    p.add_argument("--logprobs", action="store_true", help="add per-token log-probs to each result")
    add_engine_flags(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "score",
        help="summed log-prob of given completions (DPO reference, multiple choice)",
        description='Scores every request line: the summed log-prob (fp32) of its "completion" (or of each of '
        'its "completions") given its prompt or chat turns, with the number of completion tokens; a bad request '
        "gets an error line and every other request is scored.",
    )
    _common(p)
    p.set_defaults(func=_score)


def load_model(args):
    """The model of `--model` (with `--adapter` merged) on `--mesh`, after the runtime is up; returns (model,
    seconds taken)."""
    t0 = time.perf_counter()
    start_runtime(args)
    from qwen_audio_jax.api import load

    model = load(
        args.model,
        dtype=compute_dtype(args),
        mesh=args.mesh,
        long_audio=args.long_audio,
        attention=args.attention,
        quantize=getattr(args, "quantize", "none"),
        adapter=getattr(args, "adapter", None),
    )
    return model, time.perf_counter() - t0


def _finish(args, summary: dict, load_s: float) -> int:
    print(json.dumps({"output": args.output, "load_s": round(load_s, 3), **summary}), file=sys.stderr)
    return 0


def _generate(args) -> int:
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.jobs.driver import run_file
    from qwen_audio_jax.jobs.generate import GenerateJob

    options = GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop_ids=tuple(args.stop_id or ()),
        seed=args.seed,
        return_logprobs=args.logprobs,
    )
    _check_paths(args)
    model, load_s = load_model(args)
    job = GenerateJob(model, options, engine_options(args), chat=args.chat, base_dir=Path(args.input).absolute().parent)
    summary = run_file(
        job,
        args.input,
        args.output,
        resume=args.resume,
        overwrite=args.overwrite,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
        workers=args.workers,
        ordered=args.ordered,
    )
    return _finish(args, summary, load_s)


def _score(args) -> int:
    from qwen_audio_jax.jobs.driver import run_file
    from qwen_audio_jax.jobs.score import ScoreJob

    _check_paths(args)
    model, load_s = load_model(args)
    job = ScoreJob(model, batch_size=args.batch_size, base_dir=Path(args.input).absolute().parent, chat=args.chat)
    summary = run_file(
        job,
        args.input,
        args.output,
        resume=args.resume,
        overwrite=args.overwrite,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
        workers=args.workers,
        ordered=args.ordered,
    )
    return _finish(args, summary, load_s)


def _check_paths(args) -> None:
    """Input and output are checked before the model loads, so a wrong path costs nothing."""
    from qwen_audio_jax.checkpoint.safe_write import check_result_file
    from qwen_audio_jax.errors import ConfigError
    from qwen_audio_jax.jobs.records import open_input

    if args.retry_errors and not args.resume:
        raise ConfigError("--retry-errors only makes sense with --resume.")
    open_input(args.input)
    check_result_file(args.output, input_path=args.input, resume=args.resume, overwrite=args.overwrite)
