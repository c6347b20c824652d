"""`eval`: the official Qwen2-Audio / Qwen-Audio scoring (WER, BLEU, accuracy) over a benchmark manifest."""

from __future__ import annotations

import argparse

from qwen_audio_jax.choices import EVAL_TASKS, VARIANTS
from qwen_audio_jax.cli.args import (
    add_adapter_flag,
    add_batch_size_flag,
    add_engine_flags,
    add_long_audio_flag,
    add_quantize_flag,
    add_runtime_flags,
    engine_options,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="generate with the task's reference prompt and score like the official scripts",
        description="With --model: generate every manifest entry (greedy, the official decoding) and score. With "
        "--predictions: score an existing results file. Writes OUTPUT/metrics.json and OUTPUT/errors.jsonl.",
    )
    p.add_argument("--task", required=True, choices=EVAL_TASKS)
    p.add_argument(
        "--manifest",
        required=True,
        help='JSONL: {"id", "audio", "reference", "source", "language", ["target_language"], ["prompt"], ["question"]}',
    )
    p.add_argument("--output", required=True, help="output directory (metrics.json, errors.jsonl, predictions)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model dir: generate the predictions first")
    src.add_argument("--predictions", help="an existing generate results JSONL to score")
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default=None,
        help="whose official rules score the predictions (default: the model's; qwen2_audio for --predictions)",
    )
    add_batch_size_flag(p, "decode slots (scores do not depend on it)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted generation in OUTPUT")
    p.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="use the chat presets (default: when the checkpoint is a chat model)",
    )
    p.add_argument("--no-chat", dest="chat", action="store_false")
    add_long_audio_flag(p)
    add_runtime_flags(p)
    add_quantize_flag(p)
    add_adapter_flag(p)
    add_engine_flags(p)
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from qwen_audio_jax.errors import ConfigError
    from qwen_audio_jax.jobs.evaluate import check_output, evaluate

    if args.adapter and not args.model:
        raise ConfigError("--adapter applies to --model (the model that generates); drop it with --predictions.")
    # The output is checked before the model loads, so a wrong --output costs nothing.
    check_output(args.manifest, args.output, generating=bool(args.model), predictions=args.predictions)
    model = None
    if args.model:
        from qwen_audio_jax.cli.infer_cmd import load_model

        model, _ = load_model(args)
    result = evaluate(
        args.task,
        args.manifest,
        args.output,
        model=model,
        predictions=args.predictions,
        engine_options=engine_options(args),
        chat=args.chat,
        resume=args.resume,
        variant=args.variant,
        progress=not args.no_progress,
    )
    print(result["table"])
    print(f"-> {result['output']}/metrics.json, errors.jsonl")
    return 0
