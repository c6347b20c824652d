"""JSONL in and out for batch jobs: tolerant request reading, and a results file that survives being killed.

Results are appended and flushed batch by batch (fsync), so a killed run loses at most the batch in flight;
`--resume` drops a torn last line, keeps every complete result, and skips the ids already answered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from qwen_audio_jax.errors import DataError


def count_lines(path: str | Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def read_records(path: str | Path) -> Iterator[tuple[str, dict | None, str | None]]:
    """Yields (id, record or None, error or None) per non-empty line. A line that is not a JSON object, or has
    no string "id", becomes an error entry (id "line-N") instead of stopping the job."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: input file not found.")
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line-{n}", None, f"{path.name} line {n} is not valid JSON ({e.msg}); fix the line."
                continue
            if not isinstance(record, dict):
                yield f"line-{n}", None, f"{path.name} line {n} is not a JSON object."
                continue
            rid = record.get("id")
            if not isinstance(rid, str) or not rid:
                yield f"line-{n}", None, f'{path.name} line {n} has no string "id"; every request needs a unique id.'
                continue
            if rid in seen:
                yield rid, None, f"{path.name} line {n}: id {rid!r} is used by an earlier request; ids must be unique."
                continue
            seen.add(rid)
            yield rid, record, None


class ResultWriter:
    """Appends result lines to `path`. With resume, existing complete lines are kept and their ids reported."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.done_ids: set[str] = set()
        if self.path.exists() and not (resume or overwrite):
            raise DataError(f"{self.path} already exists; pass --resume to continue it or --overwrite to replace it.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            self._repair_and_collect()
            self._f = open(self.path, "a", encoding="utf-8")
        else:
            self._f = open(self.path, "w", encoding="utf-8")

    @staticmethod
    def existing_ids(path: str | Path) -> set[str]:
        """Ids of the complete result lines of `path` (empty if it does not exist)."""
        path = Path(path)
        return {rid for _, rid in _result_lines(path.read_text(encoding="utf-8"))} if path.exists() else set()

    def _repair_and_collect(self) -> None:
        data = self.path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]  # a torn last line (killed mid-write) is dropped and redone
        lines = []
        for line, rid in _result_lines(keep.decode("utf-8")):
            self.done_ids.add(rid)
            lines.append(line)
        text = "".join(line + "\n" for line in lines)
        if text.encode("utf-8") != data:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)

    def write(self, result: dict) -> None:
        self._f.write(json.dumps(result, ensure_ascii=False) + "\n")

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self.sync()
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def merge_parts(output: str | Path, parts: list[Path], keep_existing: bool) -> None:
    """Concatenates per-process result files into `output` (atomically) and removes them. Complete lines only;
    with keep_existing, the lines already in `output` (a resumed run) come first."""
    output = Path(output)
    lines: list[str] = []
    seen: set[str] = set()
    sources = ([output] if keep_existing and output.exists() else []) + [p for p in parts if p.exists()]
    for src in sources:
        for line, rid in _result_lines(src.read_text(encoding="utf-8")):  # torn lines are redone on resume
            if rid not in seen:
                seen.add(rid)
                lines.append(line)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, output)
    for p in parts:
        p.unlink(missing_ok=True)


def _result_lines(text: str) -> Iterator[tuple[str, str]]:
    """(line, id) of every complete result line (a JSON object with a string id); others are skipped."""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            yield line, record["id"]
