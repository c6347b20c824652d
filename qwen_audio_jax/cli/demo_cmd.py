"""`demo`: the embedded model answering about the bundled held-out clips or the user's own audio (no download)."""

from __future__ import annotations

import argparse

from qwen_audio_jax.choices import DEFAULT_BATCH_SIZE, DEMO_ASK_MAX_NEW_TOKENS, DEMO_MAX_NEW_TOKENS
from qwen_audio_jax.cli.args import add_long_audio_flag, positive_int
from qwen_audio_jax.runtime import CACHE_FLAG_HELP


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a small bundled Qwen2-Audio answers about held-out clips (or --audio FILE); no download",
        description="Without --audio: asks the bundled demo model about the bundled held-out clips and prints, per "
        "clip, the question, the expected answer and the model's answer, then the word error rate and accuracy. "
        "With --audio FILE: answers about your file (by default: what it hears, a transcript for speech); the "
        "answer alone is the last line.",
    )
    p.add_argument("--audio", default=None, help="an audio file to ask about instead of the bundled clips")
    p.add_argument("--ask", default=None, help='the question about --audio (default: "What sound is this?")')
    p.add_argument("--model", default=None, help="another model dir to run the demo with (default: the bundled one)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="decode slots (default %(default)s; the same for --audio, so one run's compiled programs serve the other)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help=f"default {DEMO_MAX_NEW_TOKENS} ({DEMO_ASK_MAX_NEW_TOKENS} with --audio)",
    )
    p.add_argument("--output", default=None, help="also write the results as JSON lines here")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it holds earlier results")
    add_long_audio_flag(p, "--audio")
    p.add_argument("--compilation-cache", default=None, metavar="DIR", help=CACHE_FLAG_HELP)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from qwen_audio_jax.cli.args import start_runtime
    from qwen_audio_jax.demo.bundle import DEMO_MODEL
    from qwen_audio_jax.demo.run import answer_audio, run_demo
    from qwen_audio_jax.errors import ConfigError

    model_dir = args.model or DEMO_MODEL
    if args.audio is None and args.ask is not None:
        raise ConfigError("--ask is a question about --audio FILE; pass the file too.")
    if args.audio is not None and args.output is not None:
        raise ConfigError("--output writes the bundled clips' results; with --audio the answer is printed.")
    start_runtime(args)  # the persistent compilation cache, as every other command: a second run compiles nothing
    if args.audio is None:
        run_demo(
            model_dir=model_dir,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens or DEMO_MAX_NEW_TOKENS,
            output=args.output,
            overwrite=args.overwrite,
            long_audio=args.long_audio,
        )
    else:
        answer_audio(
            args.audio,
            args.ask,
            model_dir=model_dir,
            max_new_tokens=args.max_new_tokens or DEMO_ASK_MAX_NEW_TOKENS,
            long_audio=args.long_audio,
            batch_size=args.batch_size,
        )
    return 0
