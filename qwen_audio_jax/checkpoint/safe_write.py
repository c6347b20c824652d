"""Writing outputs without ever destroying what this tool did not write (docs/decisions.md §15).

* Every directory the tool writes (model dirs, HF exports, demo work dirs) carries a marker file; `--overwrite`
  replaces a directory only if it has that marker (or is empty), never an arbitrary one. Work directories that
  already existed (a training `output_dir` such as `.`) are used but never marked: only directories the tool
  created, or found empty, are marked.
* A destination that is its source, lies inside it, or contains it is refused before anything is touched
  (convert / export-hf: the source; training: the model, the reference model and the data; eval: the manifest).
* Directories are written atomically: into a temp sibling, renamed into place when complete. A run killed
  mid-write leaves `.NAME.tmp-*` / `.NAME.old-*` siblings; the next write to NAME removes them (they carry the
  marker, so nothing else is ever matched) and says so. A temp that a live run holds (flock) is never removed.
  The temp is made 0700 (tempfile.mkdtemp), then given the mode the umask gives any new folder, so every
  output directory (convert, export-hf, a training run's model) is readable as the user's other folders are.
* Locks (fcntl.flock, released by the kernel when a process dies): a directory destination (`.NAME.lock`
  beside it), a work directory (`.qwen-audio-jax.lock` inside it) and a results file (`.NAME.lock` beside it)
  are held while they are written, so a second run on the same destination is refused with one line naming
  the process that holds it, instead of interleaving with it.
* Result files (`generate`, `score`) are replaced only when they look like our own results (or are empty),
  never when they are the input, and only when they are regular files (not a pipe, a device or a socket).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from qwen_audio_jax.checkpoint.locks import (
    acquire,
    check_not_in_use,
    deferred_interrupt,
    dir_is_live,
    locked,
    release,
    sidecar_lock,
)
from qwen_audio_jax.errors import DataError, OutputError

__all__ = [
    "MARKER",
    "DIR_LOCK",
    "mark",
    "is_ours",
    "check_sources",
    "check_destination",
    "prepare_work_dir",
    "release_work_dir",
    "remove_stale_temps",
    "atomic_directory",
    "current_umask",
    "deferred_interrupt",
    "check_result_file",
    "looks_like_results",
]

MARKER = ".written-by-qwen-audio-jax"
DIR_LOCK = ".qwen-audio-jax.lock"  # inside a work directory (training output_dir, eval output) while in use
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def mark(directory: Path, kind: str) -> None:
    """Marks `directory` as written by this tool (`kind`: "model", "hf-export", "demo", "training", "eval")."""
    (Path(directory) / MARKER).write_text(json.dumps({"kind": kind, "pid": os.getpid()}) + "\n")


def is_ours(directory: Path) -> bool:
    return (Path(directory) / MARKER).is_file()


# ---- destinations -----------------------------------------------------------------------------------------------
def _related(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_sources(dst: str | Path, sources, what: str = "destination") -> Path:
    """Refuses a destination that is, is inside, or contains one of its inputs. `sources`: paths, or a mapping
    {name of the input: path} (None entries skipped). Returns dst as an absolute path."""
    dst = Path(dst).absolute()
    items = sources.items() if isinstance(sources, Mapping) else (("input", s) for s in sources)
    for name, src in items:
        if src is not None and str(src) != "" and _related(dst, Path(src)):
            raise OutputError(
                f"{what} {dst} is the same as, inside, or a parent of the {name} {Path(src).absolute()}; "
                "choose a destination outside it."
            )
    return dst


def check_destination(dst: str | Path, *, sources=(), overwrite: bool = False, what: str = "destination") -> Path:
    """Refuses (OutputError, one sentence) a destination that would destroy an input or a directory this
    tool did not write, or that another run is writing. Returns dst as an absolute path."""
    dst = check_sources(dst, sources, what)
    check_not_in_use(sidecar_lock(dst), dst)
    if dst.exists():
        if not overwrite:
            raise OutputError(f"{dst} already exists; choose another destination or pass --overwrite.")
        if not dst.is_dir():
            raise OutputError(f"{dst} exists and is not a directory; choose another destination.")
        if os.path.ismount(dst):  # a directory is replaced by a rename, which a mount point refuses (EBUSY)
            raise OutputError(
                f"{dst} is a mount point, which cannot be replaced; choose a new directory inside it instead."
            )
        if not is_ours(dst) and any(dst.iterdir()):
            raise OutputError(
                f"{dst} exists and was not written by qwen-audio-jax, so --overwrite will not delete it; "
                "choose another destination or remove it yourself."
            )
        check_not_in_use(dst / DIR_LOCK, dst)
    elif dst.parent.exists() and not dst.parent.is_dir():
        raise OutputError(f"{dst.parent} is a file, so {dst} cannot be created; choose another destination.")
    return dst


def prepare_work_dir(
    path: str | Path, *, what: str, kind: str, sources=(), lock: bool = True, foreign_ok: bool = True
) -> Path:
    """A directory a run writes several files into (training's output_dir, eval's output), checked before
    anything runs: not related to its inputs, a directory, writable, not in use (then locked by this process
    until `release_work_dir`). Marked as ours only when this call created it or found it empty; with
    foreign_ok=False a non-empty directory without the marker is refused."""
    out = check_sources(path, sources, what)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what} {out} is a file; choose a directory.")
    try:
        fresh = not out.exists() or not any(out.iterdir())
    except OSError as e:
        raise OutputError(f"cannot read {what} {out} ({e.strerror}); choose another location.") from None
    if not fresh and not foreign_ok and not is_ours(out):
        raise OutputError(
            f"{what} {out} exists and was not written by qwen-audio-jax, so its files will not be replaced; "
            "choose a new or empty directory."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {what} {out} ({e.strerror}); choose a writable location.") from None
    if not os.access(out, os.W_OK):
        raise OutputError(f"{what} {out} is not writable; choose a writable location.")
    if lock:
        acquire(out / DIR_LOCK, out)
    if fresh:
        try:
            mark(out, kind)
        except OSError as e:
            if lock:
                release(out / DIR_LOCK, fully=True)
            raise OutputError(f"cannot write in {what} {out} ({e.strerror}); choose a writable location.") from None
    return out


def release_work_dir(path: str | Path) -> None:
    release(Path(path).absolute() / DIR_LOCK, fully=True)


# ---- atomic directories -----------------------------------------------------------------------------------------
def remove_stale_temps(dst: Path, warn=None) -> list[Path]:
    """Removes `.NAME.tmp-*` / `.NAME.old-*` siblings of dst left by killed runs (only marked ones, and never
    one a live run holds)."""
    warn = warn or (lambda m: print(m, file=sys.stderr))
    removed = []
    if not dst.parent.is_dir():
        return removed
    for p in dst.parent.iterdir():
        stale = p.name.startswith(f".{dst.name}.tmp-") or p.name.startswith(f".{dst.name}.old-")
        if not (stale and p.is_dir() and not p.is_symlink()):
            continue
        if (is_ours(p) or is_ours(p / dst.name) or not any(p.iterdir())) and not dir_is_live(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        warn(
            f"warning: removed {len(removed)} unfinished temporary director{'y' if len(removed) == 1 else 'ies'} "
            f"left by an interrupted run: {', '.join(str(p) for p in removed)}"
        )
    return removed


def _names(directory: Path) -> list[str]:
    try:
        return sorted(c.name for c in directory.iterdir())
    except OSError:
        return []


def _discard(tmp: Path) -> None:
    """Deletes a failed write's temp, its marker last: if this is cut short (a second Ctrl-C) or something
    still writes into it, it keeps its marker and the next run removes it."""
    for _ in range(3):
        for name in _names(tmp):
            child = tmp / name
            if name == MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
        if _names(tmp) in ([], [MARKER]):
            break
    if _names(tmp) not in ([], [MARKER]):
        return  # still being written into (a library's threads): marked, so the next run removes it
    try:
        (tmp / MARKER).unlink(missing_ok=True)
        tmp.rmdir()
    except OSError:
        with contextlib.suppress(OSError):
            if tmp.is_dir() and not is_ours(tmp):
                mark(tmp, "unfinished")


def _write_error(exc: BaseException, dst: Path) -> OutputError | None:
    """A full disk, a read-only or unwritable destination, however deep in a library's exception chain, as
    one line (None for anything else)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            return OutputError(
                f"cannot write {dst} ({exc.strerror}); nothing was written. Free space or choose "
                "a writable destination, then run again."
            )
        text = str(exc)
        for words in ("No space left on device", "Read-only file system", "Disk quota exceeded"):
            if words in text:
                return OutputError(
                    f"cannot write {dst} ({words}); nothing was written. Free space or choose a "
                    "writable destination, then run again."
                )
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (setting it is process-wide, so a
    thread writing files meanwhile could get the wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


@contextlib.contextmanager
def atomic_directory(dst: str | Path, kind: str, *, sources=(), overwrite: bool = False, warn=None) -> Iterator[Path]:
    """Yields a fresh, marked temp dir beside `dst`; on success it replaces `dst`, on any error it is deleted.
    The destination is locked for the whole write (a second writer is refused)."""
    dst = check_destination(dst, sources=sources, overwrite=overwrite)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {dst.parent} ({e.strerror}); choose a writable destination.") from None
    with locked(sidecar_lock(dst), dst):
        remove_stale_temps(dst, warn)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
            tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 is for shared /tmp; this is an output folder
        except OSError as e:
            raise OutputError(f"cannot write in {dst.parent} ({e.strerror}); choose a writable destination.") from None
        held = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Orbax logs every failure of its writer threads with a full traceback (hundreds of lines for a full
        # disk) before the same error reaches us; it is reported once, as one line, below.
        absl, level = logging.getLogger("absl"), logging.getLogger("absl").level
        absl.setLevel(logging.CRITICAL)
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live temp is never taken for stale
            mark(tmp, kind)
            yield tmp
            old = None
            try:
                if dst.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
                    dst.rename(old / dst.name)
                tmp.rename(dst)
            except OSError as e:  # a destination that cannot be renamed (a mount point made meanwhile, say)
                if old is not None:
                    if (old / dst.name).exists() and not dst.exists():
                        (old / dst.name).rename(dst)  # the previous one back in place
                    if not (old / dst.name).exists():
                        shutil.rmtree(old, ignore_errors=True)
                raise OutputError(f"cannot put the result in place at {dst} ({e.strerror}); it is unchanged.") from e
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException as e:
            _discard(tmp)
            short = _write_error(e, dst) if isinstance(e, Exception) else None
            if short is not None:
                raise short from None
            raise
        finally:
            absl.setLevel(level)
            os.close(held)


# ---- result files -----------------------------------------------------------------------------------------------
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
    if output.exists() and not stat.S_ISREG(output.stat().st_mode):
        raise OutputError(
            f"the output {output} is not a regular file (a pipe, a device or a socket); results are written "
            "to a file (resumable, replaced atomically): pass a file path."
        )
    if output.parent.exists() and not output.parent.is_dir():
        raise OutputError(f"{output.parent} is a file, so {output} cannot be created; choose another output path.")
    check_not_in_use(sidecar_lock(output), output)
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
            first = f.readline(1 << 20)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}).") from e
    if not first.strip():
        return True
    try:
        record = json.loads(first)
    except (ValueError, RecursionError):
        return False
    return isinstance(record, dict) and "id" in record and "error" in record
