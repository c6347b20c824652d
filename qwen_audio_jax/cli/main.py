"""`qwen-audio-jax` command line: one subcommand per job, each a thin layer over a Python entry point.

The error contract: a user error (any QwenAudioError, or a bad flag) prints one line, `error: ...`, and exits
with status 2; anything else is a bug in this package and prints one line naming the file where the full
traceback was written (exit 1). `--help` and usage errors never import jax, so they answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings

from qwen_audio_jax.errors import QwenAudioError

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep
_python_showwarning = warnings.showwarning

# module defining `add_parsers(subparsers)` for each group of subcommands
COMMAND_MODULES = (
    "qwen_audio_jax.cli.convert_cmd",  # convert, export-hf
    "qwen_audio_jax.cli.infer_cmd",  # generate, score
    "qwen_audio_jax.cli.eval_cmd",  # eval
    "qwen_audio_jax.cli.train_cmd",  # train, sft, dpo
    "qwen_audio_jax.cli.plan_cmd",  # plan
    "qwen_audio_jax.cli.demo_cmd",  # demo
    "qwen_audio_jax.cli.serve_cmd",  # serve
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, as for every other user error
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qwen-audio-jax",
        description="Qwen2-Audio and Qwen-Audio in JAX: convert checkpoints, batch inference, scoring, "
        "evaluation, SFT/DPO training.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parsers(sub)
    return parser


class _Version(argparse.Action):
    """--version, read from the installed package's metadata only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("qwen-audio-jax")
        except PackageNotFoundError:  # a source tree that was never installed
            text = "(not installed)"
        print(f"{parser.prog} {text}")
        parser.exit(0)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """This package's warnings (a truncated long clip...) as one line, like its errors, written around any
    progress bar; others as Python shows them."""
    if not os.path.realpath(filename).startswith(_PACKAGE_DIR):
        return _python_showwarning(message, category, filename, lineno, file, line)
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=file or sys.stderr)


def _quiet_library_threads() -> None:
    """What libraries print from their own threads and coroutines after a failure is not a traceback a user can
    act on (Orbax's reads cut short by a damaged model dir: "Exception ignored in <coroutine>", "Task exception
    was never retrieved", "Event loop is closed", some after our error line, at exit): the error it belongs to is
    reported in one line. An unraisable exception raised in this package (a bug) still prints."""
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
        if any(os.path.realpath(f.filename).startswith(_PACKAGE_DIR) for f in frames):
            default(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _report_bug(exc: BaseException) -> int:
    path = os.path.join(tempfile.gettempdir(), f"qwen-audio-jax-traceback-{int(time.time())}-{os.getpid()}.txt")
    try:
        with open(path, "w") as f:
            traceback.print_exception(exc, file=f)
        where = f"the full traceback is in {path}"
    except OSError:
        where = "the traceback could not be written"
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(f"internal error: {type(exc).__name__}: {first} (a bug in qwen-audio-jax; {where})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    if argv is None:  # the command line (in-process callers, tests among them, keep their interpreter's hooks)
        _quiet_library_threads()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): returned, so main() can be called in-process
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except QwenAudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the contract: never a traceback on the terminal
        return _report_bug(e)


if __name__ == "__main__":
    sys.exit(main())
