"""`demo`: the embedded default model answering about bundled clips or the user's own audio (no download)."""

from __future__ import annotations

import argparse

from qwen_audio_jax.cli.args import positive_int


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole path on a bundled model and audio (no download)")
    p.add_argument("--workdir", default=None, help="keep the demo's files here (default: a temp dir, removed)")
    p.add_argument("--max-new-tokens", type=positive_int, default=16)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from qwen_audio_jax.demo import run_demo

    run_demo(args.workdir, keep=args.workdir is not None, max_new_tokens=args.max_new_tokens)
    return 0
