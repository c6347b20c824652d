"""The results file of a batch job: it survives being killed, and resume never loses or repeats a request.

Results are appended and flushed as they come (fsync), so a killed run loses at most what was in flight.
`--resume` drops a torn last line, keeps every complete result and skips the ids already answered; with
`--retry-errors` a request whose line is an error is removed from the file and tried again. A writer holds
the file's lock (checkpoint/locks.py) from opening to closing, so two runs never write one file.

Lines are in completion order (a short request finishes before a long one that came earlier); `order_results`
rewrites a complete file in input order (`--ordered`), only once every request is answered.

Every reading of a results file (resume, merge, order) goes a line at a time: memory follows the number of ids,
not the size of the file. Only complete lines (ending in a newline) count; a torn last line is redone.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from qwen_audio_jax.checkpoint.locks import acquire, locked, release, sidecar_lock
from qwen_audio_jax.errors import OutputError
from qwen_audio_jax.jobs.id_index import IdIndex


class ResultWriter:
    """Appends result lines to `path`. With resume, existing complete lines are kept and their ids reported."""

    def __init__(self, path: str | Path, *, resume: bool = False, retry_errors: bool = False):
        """Opens `path` (checked beforehand by checkpoint/safe_write.py's `check_result_file`): appending to its
        complete lines with resume, else replacing it."""
        self.path = Path(path).absolute()
        self.done_ids: set[str] = set()
        self.retried = 0
        self._synced = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output directory {self.path.parent} ({e.strerror}).") from None
        # Locked before the file is touched: a second run on this file (a `--resume` beside a running job) is
        # refused with the holder's pid instead of truncating it or appending between its lines.
        self._lock = acquire(sidecar_lock(self.path), self.path)
        try:
            if resume and self.path.exists():
                self._repair_and_collect(retry_errors)
                self._f = open(self.path, "a", encoding="utf-8")
            else:
                self._f = open(self.path, "w", encoding="utf-8")
        except OSError as e:
            release(self._lock)
            raise OutputError(f"cannot write {self.path} ({e.strerror}); choose another output path.") from None
        except BaseException:
            release(self._lock)
            raise

    @staticmethod
    def existing_ids(path: str | Path) -> set[str]:
        """Ids of the complete result lines of `path` (empty if it does not exist)."""
        return {rid for _, rid, _ in _result_lines(path)}

    def _repair_and_collect(self, retry_errors: bool) -> None:
        """Collects the ids of the complete lines; rewrites the file (atomically, a line at a time) only when a
        line goes: a torn last line (killed mid-write), a line that is not a result, or an error to retry."""
        kept = 0
        for _, rid, failed in _result_lines(self.path):
            if retry_errors and failed:
                self.retried += 1
                continue
            self.done_ids.add(rid)
            kept += 1
        with open(self.path, "rb") as f:
            lines = sum(1 for _ in f)
        if kept == lines and _ends_complete(self.path):
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            for line, _, failed in _result_lines(self.path):
                if not (retry_errors and failed):
                    out.write(line + "\n")
        os.replace(tmp, self.path)

    def write(self, result: dict) -> None:
        """Appends one line and flushes it to the OS (it survives the process being killed); fsync (power
        loss) at most once a second and at close."""
        try:
            self._f.write(json.dumps(result, ensure_ascii=False) + "\n")
            self._f.flush()
        except OSError as e:
            raise self._full(e) from None
        if time.monotonic() - self._synced > 1.0:
            self.sync()

    def sync(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise self._full(e) from None
        self._synced = time.monotonic()

    def _full(self, e: OSError) -> OutputError:
        """A full disk or a vanished mount while writing: one line; the complete lines so far stay."""
        return OutputError(
            f"cannot write {self.path} ({e.strerror}); the complete results so far are kept: fix that, then run "
            "again with --resume."
        )

    def close(self) -> None:
        try:
            self.sync()
        finally:
            with contextlib.suppress(OSError):
                self._f.close()
            release(self._lock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def error_ids(path: str | Path) -> set[str]:
    """Ids whose result line in `path` is an error."""
    return {rid for _, rid, failed in _result_lines(path) if failed}


def merge_parts(output: str | Path, parts: list[Path], keep_existing: bool, retry_errors: bool = False) -> None:
    """Concatenates per-process result files into `output` (atomically) and removes them. Complete lines only;
    with keep_existing, the lines already in `output` (a resumed run) come first, except, with retry_errors,
    its error lines (their requests were run again)."""
    output = Path(output)
    seen: set[str] = set()
    sources = ([output] if keep_existing and output.exists() else []) + [p for p in parts if p.exists()]
    tmp = output.with_suffix(output.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for src in sources:
            for line, rid, failed in _result_lines(src):  # torn lines are redone on resume
                if retry_errors and failed and src == output:
                    continue
                if rid not in seen:
                    seen.add(rid)
                    out.write(line + "\n")
    os.replace(tmp, output)
    for p in parts:
        p.unlink(missing_ok=True)


def order_results(path: str | Path, ids: Iterable[str] | Callable[[], Iterable[str]]) -> bool:
    """Rewrites the results file `path` in the order of `ids` (the input order), atomically, once every id has
    its line; lines of other ids (an earlier run's) follow in their order. Returns whether it did: a file that
    still lacks an answer keeps its completion order, so an interrupted run resumes exactly as without it.
    `ids` may be a function giving them afresh (it is read twice), so a streamed input is never held.

    Holds the file's lock; the file is indexed by byte offsets (24 bytes an id, and 16 a line), so memory stays
    small for any size."""
    path = Path(path).absolute()
    listed = None if callable(ids) else list(ids)
    again = ids if listed is None else (lambda: listed)
    with locked(sidecar_lock(path), path):
        with open(path, "rb") as f:
            starts, sizes = array("q"), array("q")  # of the complete result lines, by row

            def rows() -> Iterator[tuple[str, int]]:
                start = 0
                for raw in f:
                    parsed = _parse_result(raw)
                    if parsed is not None:
                        yield parsed[0], len(starts)
                        starts.append(start)
                        sizes.append(len(raw))
                    start += len(raw)

            index = IdIndex(rows())  # id -> the row of its first line
            if any(rid not in index for rid in again()):
                return False
            # The input's ids first, then the other ids' lines in their order (an id given twice is written once).
            keep = np.zeros(len(starts), bool)
            keep[index.values()] = True
            tmp = path.with_name(f".{path.name}.ordered.tmp")
            try:
                with open(tmp, "wb") as out:
                    for rid in again():
                        row = index.get(rid)
                        if keep[row]:
                            f.seek(starts[row])
                            out.write(f.read(sizes[row]))
                            keep[row] = False
                    for row in np.flatnonzero(keep):
                        f.seek(starts[row])
                        out.write(f.read(sizes[row]))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise OutputError(
                    f"cannot write {path} in input order ({e.strerror}); it is complete, in completion order."
                ) from None
    return True


def _result_lines(path: str | Path) -> Iterator[tuple[str, str, bool]]:
    """(line, id, is an error) of every complete result line of `path` (a JSON object with a string id, ending
    in a newline), read one at a time; other lines are skipped, and a missing file has none."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            parsed = _parse_result(raw)
            if parsed is not None:
                yield raw.rstrip(b"\r\n").decode("utf-8", errors="replace"), parsed[0], parsed[1]


def _parse_result(raw: bytes) -> tuple[str, bool] | None:
    """(id, is an error) of one complete result line, or None (torn, not JSON, not a result)."""
    if not raw.endswith(b"\n"):
        return None
    try:
        record = json.loads(raw.decode("utf-8", errors="replace"))
    except (json.JSONDecodeError, RecursionError):
        return None
    if isinstance(record, dict) and isinstance(record.get("id"), str):
        return record["id"], record.get("error") is not None
    return None


def _ends_complete(path: Path) -> bool:
    """True when the file is empty or ends with a newline (no torn last line)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
