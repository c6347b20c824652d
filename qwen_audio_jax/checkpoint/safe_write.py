"""Writing outputs without ever destroying what this tool did not write (docs/decisions.md §15).

* Every directory the tool writes (model dirs, HF exports, demo work dirs, training output dirs) carries a
  marker file; `--overwrite` replaces a directory only if it has that marker (or is empty), never an
  arbitrary one.
* A destination that is its source, lies inside it, or contains it is refused before anything is touched.
* Directories are written atomically: into a temp sibling, renamed into place when complete. A run killed
  mid-write leaves `.NAME.tmp-*` / `.NAME.old-*` siblings; the next write to NAME removes them (they carry the
  marker, so nothing else is ever matched) and says so.
* Result files (`generate`, `score`) are replaced only when they look like our own results (or are empty),
  never when they are the input.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qwen_audio_jax.errors import DataError, OutputError

MARKER = ".written-by-qwen-audio-jax"


def mark(directory: Path, kind: str) -> None:
    """Marks `directory` as written by this tool (`kind`: "model", "hf-export", "demo", "training")."""
    (Path(directory) / MARKER).write_text(json.dumps({"kind": kind}) + "\n")


def is_ours(directory: Path) -> bool:
    return (Path(directory) / MARKER).is_file()


def _related(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_destination(dst: str | Path, *, sources: tuple[str | Path, ...] = (), overwrite: bool = False) -> Path:
    """Refuses (OutputError, one sentence) a destination that would destroy an input or a directory this
    tool did not write. Returns dst as an absolute path."""
    dst = Path(dst).absolute()
    for src in sources:
        if _related(dst, Path(src)):
            raise OutputError(
                f"destination {dst} is the same as, inside, or a parent of the input {Path(src).absolute()}; "
                "choose a destination outside it."
            )
    if dst.exists():
        if not overwrite:
            raise OutputError(f"{dst} already exists; choose another destination or pass --overwrite.")
        if not dst.is_dir():
            raise OutputError(f"{dst} exists and is not a directory; choose another destination.")
        if not is_ours(dst) and any(dst.iterdir()):
            raise OutputError(
                f"{dst} exists and was not written by qwen-audio-jax, so --overwrite will not delete it; "
                "choose another destination or remove it yourself."
            )
    return dst


def remove_stale_temps(dst: Path, warn=None) -> list[Path]:
    """Removes `.NAME.tmp-*` / `.NAME.old-*` siblings of dst left by killed runs (only marked ones)."""
    warn = warn or (lambda m: print(m, file=sys.stderr))
    removed = []
    if not dst.parent.is_dir():
        return removed
    for p in dst.parent.iterdir():
        stale = p.name.startswith(f".{dst.name}.tmp-") or p.name.startswith(f".{dst.name}.old-")
        if stale and p.is_dir() and (is_ours(p) or is_ours(p / dst.name) or not any(p.iterdir())):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        warn(
            f"warning: removed {len(removed)} unfinished temporary director{'y' if len(removed) == 1 else 'ies'} "
            f"left by an interrupted run: {', '.join(str(p) for p in removed)}"
        )
    return removed


@contextlib.contextmanager
def atomic_directory(
    dst: str | Path, kind: str, *, sources: tuple = (), overwrite: bool = False, warn=None
) -> Iterator[Path]:
    """Yields a fresh, marked temp dir beside `dst`; on success it replaces `dst`, on any error it is deleted."""
    dst = check_destination(dst, sources=sources, overwrite=overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dst, warn)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        mark(tmp, kind)
        yield tmp
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            dst.rename(old / dst.name)
            tmp.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_result_file(output: str | Path, *, input_path: str | Path | None, resume: bool, overwrite: bool) -> Path:
    """Checks a results JSONL destination before a job starts (OutputError, one sentence, nothing touched)."""
    output = Path(output).absolute()
    if resume and overwrite:
        raise OutputError(
            "--resume and --overwrite contradict each other: resume keeps the results, overwrite "
            "replaces them; pass one."
        )
    if input_path is not None and output.exists() and Path(input_path).exists():
        if os.path.samefile(output, input_path):
            raise OutputError(f"the output {output} is the input file; choose another output path.")
    elif input_path is not None and output == Path(input_path).absolute():
        raise OutputError(f"the output {output} is the input file; choose another output path.")
    if output.is_dir():
        raise OutputError(f"the output {output} is a directory; pass a file path such as {output / 'results.jsonl'}.")
    if output.exists() and not resume:
        if not overwrite:
            raise OutputError(f"{output} already exists; pass --resume to continue it or --overwrite to replace it.")
        if not looks_like_results(output):
            raise OutputError(
                f"{output} exists and is not a results file written by qwen-audio-jax, so "
                "--overwrite will not replace it; choose another output path."
            )
    if not output.parent.exists():
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output directory {output.parent} ({e.strerror}).") from e
    if not os.access(output.parent, os.W_OK):
        raise OutputError(f"the output directory {output.parent} is not writable; choose another output path.")
    return output


def looks_like_results(path: Path) -> bool:
    """True for an empty file or one whose first line is a JSON object with "id" and "error" (our results)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}).") from e
    if not first.strip():
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "id" in record and "error" in record
