"""Reading request JSONL files so that one bad line is one error line and nothing else is lost.

Every non-empty line becomes a `Record`: either a request (a JSON object with a unique string id) or an error
sentence naming the file, the line and the fix: bytes that are not UTF-8, text that is not JSON or not an
object, invalid Unicode (a lone surrogate escape such as "\\ud800", which is valid JSON but cannot be written
back), a missing or repeated id, a line over the reader's size limit. Ids are collision-free: a line without a
usable id is named `line-N` (`line-N#2`... if a real request already uses that id), and a repeated id's error is
`ID#line-N`, so no id is ever written twice and `--resume` never mistakes one request for another.

A request file is streamed, never held (`RequestFile`): a first pass keeps only each id's first line, compactly
(what collision-free error ids and the duplicate check need), then every iteration parses one line at a time. So
a job holds 24 bytes per line of its file and the requests in flight, whatever the file's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.jobs.id_index import IdIndex
from qwen_audio_jax.jsonl import invalid_unicode, iter_lines, open_jsonl


@dataclasses.dataclass(frozen=True)
class Record:
    id: str
    request: dict | None  # None when the line is an error
    error: str | None = None
    line: int = 0
    size: int = 0  # bytes of its line (what the input pipeline counts against its in-flight budget)


class RequestFile:
    """The records of a JSONL request file, in order, read lazily: iterate it as often as needed (the job, then
    `--ordered`'s id order); `len()` is the number of non-blank lines. Only the ids are held."""

    def __init__(self, path: str | Path):
        self.path = open_input(path)
        # Each usable id -> the line that first uses it: a later line with that id is a repeat, and the id made up
        # for a line without one must be used by no line anywhere in the file, before or after it. Held compactly
        # (24 bytes an id: jobs/id_index.py), the one thing a job holds for every line of its file.
        self._count = 0
        self._first = IdIndex(self._usable_ids())

    def _usable_ids(self) -> Iterator[tuple[str, int]]:
        for line in iter_lines(self.path):
            self._count += 1
            rid = line.value.get("id") if isinstance(line.value, dict) else None
            if _usable_id(rid):
                yield rid, line.number

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Record]:
        name = self.path.name
        taken: set[str] = set()  # error ids given so far (real ids are told apart by their first line)

        def unique(base: str) -> str:  # an error line's id: taken by no real request and by no other line
            rid, k = base, 1
            while rid in taken or rid in self._first:
                k += 1
                rid = f"{base}#{k}"
            taken.add(rid)
            return rid

        for line in iter_lines(self.path):
            n, value, error = line.number, line.value, line.error
            rid = value.get("id") if isinstance(value, dict) else None
            if not _usable_id(rid):
                yield Record(
                    unique(f"line-{n}"),
                    None,
                    error or f'{name} line {n} has no string "id"; every request needs a unique id.',
                    n,
                    line.size,
                )
            elif self._first.get(rid) != n:
                yield Record(
                    unique(f"{rid}#line-{n}"),
                    None,
                    f"{name} line {n}: id {rid!r} is used by an earlier request; ids must be unique.",
                    n,
                    line.size,
                )
            else:
                yield Record(rid, None if error else value, error, n, line.size)


def read_records(path: str | Path) -> list[Record]:
    """All records of a JSONL file, in order, as a list (small files and tests; jobs stream a `RequestFile`)."""
    return list(RequestFile(path))


def _usable_id(rid) -> bool:
    """A request id: a non-blank string that can be written back (valid Unicode)."""
    return isinstance(rid, str) and bool(rid.strip()) and not invalid_unicode(rid) and "\ufffd" not in rid


def records_from_list(requests: list) -> Iterator[Record]:
    """In-memory requests (the Python API): the same checks, ids defaulting to the position."""
    seen: set[str] = set()
    for n, r in enumerate(requests):
        if not isinstance(r, dict):
            yield Record(f"request-{n}", None, f"request {n} must be a dict, got {type(r).__name__}.", n)
            continue
        rid = str(r.get("id", n))
        if rid in seen:
            yield Record(f"{rid}#{n}", None, f"request {n}: id {rid!r} is used by an earlier request.", n)
            continue
        seen.add(rid)
        yield Record(rid, r, None, n)


def check_keys(record: dict, allowed: frozenset[str], job: str) -> None:
    """Refuses unknown request keys (a typo must not be silently ignored)."""
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise PromptError(
            f"unknown request key(s) {', '.join(map(repr, unknown))} for {job}; known keys: "
            f"{', '.join(sorted(allowed))}."
        )


def open_input(path: str | Path) -> Path:
    """The request file, checked before the model loads (missing, a directory, binary)."""
    return open_jsonl(path, "input file")
