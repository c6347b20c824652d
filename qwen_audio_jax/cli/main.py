"""`qwen-audio-jax` command line: one subcommand per job, each a thin layer over a Python entry point.

A user error (any QwenAudioError) prints one line, `error: ...`, and exits with status 2; a traceback means a
bug in this package.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from qwen_audio_jax.errors import QwenAudioError

# subcommand -> module defining `add_parser(subparsers)`; imported lazily so `--help` stays fast.
SUBCOMMANDS = {
    "convert": "qwen_audio_jax.cli.convert_cmd",
    "export-hf": "qwen_audio_jax.cli.convert_cmd",
    "generate": "qwen_audio_jax.cli.infer_cmd",
    "score": "qwen_audio_jax.cli.infer_cmd",
    "demo": "qwen_audio_jax.cli.demo_cmd",
    "dpo": "qwen_audio_jax.cli.train_cmd",
    "plan": "qwen_audio_jax.cli.plan_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-audio-jax",
        description="Qwen2-Audio in JAX: convert checkpoints, batch inference, scoring, DPO/SFT training.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(module).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QwenAudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
