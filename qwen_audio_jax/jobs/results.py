"""The results file of a batch job: it survives being killed, and resume never loses or repeats a request.

Results are appended and flushed as they come (fsync), so a killed run loses at most what was in flight.
`--resume` drops a torn last line, keeps every complete result and skips the ids already answered; with
`--retry-errors` a request whose line is an error is removed from the file and tried again. A writer holds
the file's lock (checkpoint/locks.py) from opening to closing, so two runs never write one file.

Lines are in completion order (a short request finishes before a long one that came earlier); `order_results`
rewrites a complete file in input order (`--ordered`), only once every request is answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from qwen_audio_jax.checkpoint.locks import acquire, locked, release, sidecar_lock
from qwen_audio_jax.errors import OutputError


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
        path = Path(path)
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return {rid for _, rid, _ in _result_lines(text)}

    def _repair_and_collect(self, retry_errors: bool) -> None:
        data = self.path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]  # a torn last line (killed mid-write) is dropped and redone
        lines = []
        for line, rid, failed in _result_lines(keep.decode("utf-8", errors="replace")):
            if retry_errors and failed:
                self.retried += 1
                continue
            self.done_ids.add(rid)
            lines.append(line)
        text = "".join(line + "\n" for line in lines)
        if text.encode("utf-8") != data:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
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
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return {rid for _, rid, failed in _result_lines(text) if failed}


def merge_parts(output: str | Path, parts: list[Path], keep_existing: bool, retry_errors: bool = False) -> None:
    """Concatenates per-process result files into `output` (atomically) and removes them. Complete lines only;
    with keep_existing, the lines already in `output` (a resumed run) come first, except, with retry_errors,
    its error lines (their requests were run again)."""
    output = Path(output)
    lines: list[str] = []
    seen: set[str] = set()
    sources = ([output] if keep_existing and output.exists() else []) + [p for p in parts if p.exists()]
    for src in sources:
        for line, rid, failed in _result_lines(src.read_text(encoding="utf-8")):  # torn lines are redone on resume
            if retry_errors and failed and src == output:
                continue
            if rid not in seen:
                seen.add(rid)
                lines.append(line)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, output)
    for p in parts:
        p.unlink(missing_ok=True)


def order_results(path: str | Path, ids: list[str]) -> bool:
    """Rewrites the results file `path` in the order of `ids` (the input order), atomically, once every id has
    its line; lines of other ids (an earlier run's) follow in their order. Returns whether it did: a file that
    still lacks an answer keeps its completion order, so an interrupted run resumes exactly as without it.

    Holds the file's lock; the file is indexed by byte offsets, so memory stays small for any size."""
    path = Path(path).absolute()
    with locked(sidecar_lock(path), path):
        offsets: dict[str, tuple[int, int]] = {}
        with open(path, "rb") as f:
            start = 0
            for raw in f:
                if raw.endswith(b"\n"):  # complete lines only
                    for _, rid, _ in _result_lines(raw.decode("utf-8", errors="replace")):
                        offsets.setdefault(rid, (start, len(raw)))
                start += len(raw)
            if any(rid not in offsets for rid in ids):
                return False
            wanted = set(ids)
            order = list(ids) + [rid for rid in offsets if rid not in wanted]
            tmp = path.with_name(f".{path.name}.ordered.tmp")
            try:
                with open(tmp, "wb") as out:
                    for rid in order:
                        f.seek(offsets[rid][0])
                        out.write(f.read(offsets[rid][1]))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise OutputError(
                    f"cannot write {path} in input order ({e.strerror}); it is complete, in completion order."
                ) from None
    return True


def _result_lines(text: str) -> Iterator[tuple[str, str, bool]]:
    """(line, id, is an error) of every complete result line (a JSON object with a string id); others are
    skipped."""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            yield line, record["id"], record.get("error") is not None
