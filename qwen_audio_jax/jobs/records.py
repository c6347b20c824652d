"""Reading request JSONL files so that one bad line is one error line and nothing else is lost.

Every non-empty line becomes a `Record`: either a request (a JSON object with a unique string id) or an error
sentence naming the file, the line and the fix: bytes that are not UTF-8, text that is not JSON or not an
object, invalid Unicode (a lone surrogate escape such as "\\ud800", which is valid JSON but cannot be written
back), a missing or repeated id. Ids are collision-free: a line without a usable id is named `line-N`
(`line-N#2`... if a real request already uses that id), and a repeated id's error is `ID#line-N`, so no id is
ever written twice and `--resume` never mistakes one request for another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.jsonl import invalid_unicode, iter_jsonl, open_jsonl


@dataclasses.dataclass(frozen=True)
class Record:
    id: str
    request: dict | None  # None when the line is an error
    error: str | None = None
    line: int = 0


def read_records(path: str | Path) -> list[Record]:
    """All records of a JSONL file, in order (two passes over the lines: real ids first, so error ids can be
    chosen that collide with none of them)."""
    parsed = list(iter_jsonl(path))
    name = Path(path).name
    real_ids = {v["id"] for _, v, err in parsed if err is None and _usable_id(v.get("id"))}
    used: set[str] = set()

    def unique(base: str) -> str:  # an error line's id: taken by no real request and by no other line
        rid, k = base, 1
        while rid in used or rid in real_ids:
            k += 1
            rid = f"{base}#{k}"
        used.add(rid)
        return rid

    out = []
    for n, value, error in parsed:
        rid = value.get("id") if isinstance(value, dict) else None
        if not _usable_id(rid):
            out.append(
                Record(
                    unique(f"line-{n}"),
                    None,
                    error or f'{name} line {n} has no string "id"; every request needs a unique id.',
                    n,
                )
            )
        elif rid in used:
            out.append(
                Record(
                    unique(f"{rid}#line-{n}"),
                    None,
                    f"{name} line {n}: id {rid!r} is used by an earlier request; ids must be unique.",
                    n,
                )
            )
        else:
            used.add(rid)
            out.append(Record(rid, None if error else value, error, n))
    return out


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
