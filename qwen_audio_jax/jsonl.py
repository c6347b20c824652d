"""JSON Lines files read one line at a time, so one bad line spoils that line and nothing else: the one reader
under request files (jobs/records.py), training data (training/data.py) and eval manifests (eval/manifest.py).

Each non-blank line is decoded as UTF-8 (a leading byte-order mark is allowed), parsed as JSON, checked to be
an object, and checked for invalid Unicode (a lone surrogate escape such as "\\ud800" is valid JSON but cannot
be written back as UTF-8). A failure is one sentence naming the file, the line and the fix.

Memory is bounded by the longest line a file may have (`MAX_LINE_BYTES`), never by the file: lines are read one at
a time, a longer line is that line's error and is skipped in pieces without ever being held whole, and every line
comes with its byte offset and size (`iter_lines`), so a caller may index a file instead of holding its records
(`read_line_at`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

from qwen_audio_jax.errors import DataError

# Deepest nesting a line may have: real requests, records and manifests nest under 10 levels (messages ->
# turn -> content -> part); a hostile line nested hundreds deep would exhaust Python's recursion limit in any
# code that walks it, so it is that line's error (json's own C parser stops near 1000 levels).
MAX_DEPTH = 64

# The longest line (its line end included) a JSON Lines file may have. Requests, records and manifest lines take
# a few kB; an inline audio array takes about 10 bytes a sample written as JSON, so 64 MiB holds over 6 minutes
# of 16 kHz audio (longer audio belongs in a file). Reading, decoding and parsing one line costs a few times its
# size, so without a limit one 100 MB line costs gigabytes before any check can refuse it.
MAX_LINE_BYTES = 64 * 2**20
_SKIP_PIECE = 2**20  # an over-long line is read past in pieces of this size


@dataclasses.dataclass(frozen=True)
class JsonLine:
    """One non-blank line: its 1-based number, the object or None, the error ("FILE line N: ...") or None, and
    where it lies in the file (byte offset and size, line end included), for `read_line_at`."""

    number: int
    value: dict | None
    error: str | None
    offset: int
    size: int


def _bad_string(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(value) -> tuple[int, bool]:
    """(nesting depth, holds a string that cannot be encoded as UTF-8), without recursion; stops past MAX_DEPTH."""
    depth, bad = 0, False
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            bad = bad or _bad_string(item)
        elif isinstance(item, (dict, list)):
            depth = max(depth, level)
            if depth > MAX_DEPTH:
                break
            children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            for k, v in children:
                if isinstance(k, str) and _bad_string(k):
                    bad = True
                stack.append((v, level + 1))
    return depth, bad


def invalid_unicode(value) -> bool:
    """True when a decoded JSON value holds a string that cannot be encoded as UTF-8 (a lone surrogate)."""
    return _walk(value)[1]


def parse_line(raw: bytes) -> tuple[dict | None, str | None]:
    """(object, None), or (None or the object, what is wrong and the fix) to be prefixed with "FILE line N: ".
    An object with invalid Unicode is returned with its error, so a caller may still read its (valid) id."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        reason = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the file as UTF-8."
        try:  # the rest of the line may still say which request it was
            value = json.loads(raw.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict) and _walk(value)[0] > MAX_DEPTH:
            value = {"id": value.get("id")}
        return (value if isinstance(value, dict) else None), reason
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno}); fix the line."
    except RecursionError:
        return None, _too_deep()
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object; write one object per line."
    if b"\\u" not in raw and raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        # Neither check can fail (the common line, decided at C speed): a lone surrogate needs a \u escape (valid
        # UTF-8 holds none), and nesting deeper than MAX_DEPTH needs more brackets than that.
        return value, None
    depth, bad = _walk(value)
    if depth > MAX_DEPTH:  # only its id is handed on (when it has a usable one), never the deep value
        rid = value.get("id")
        return ({"id": rid} if isinstance(rid, str) and not _bad_string(rid) else None), _too_deep()
    if bad:
        return value, "invalid Unicode (a lone surrogate escape such as \\ud800); fix the line."
    return value, None


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep (arrays or objects inside each other); flatten the line."


def open_jsonl(path: str | Path, what: str = "input file") -> Path:
    """The file, checked: it exists, is a file, can be read, and is not binary."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found; check the path.")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a JSONL file; pass the {what}.")
    if not path.is_file():  # a pipe (`<(cmd)`) or a device: read twice (checked, then read; resumed), so refused
        raise DataError(
            f"{path}: is not a regular file (a pipe, a device or a socket); save it to a file and pass that as "
            f"the {what}."
        )
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}).") from e
    if b"\x00" in head:
        raise DataError(f"{path}: looks binary (NUL bytes), not a JSONL file; pass one JSON object per line.")
    return path


def iter_jsonl(path: str | Path, what: str = "input file") -> Iterator[tuple[int, dict | None, str | None]]:
    """(1-based line number, object or None, error or None) for every non-blank line; an error reads
    "FILE line N: what is wrong; the fix." (the object may be given with it: see parse_line)."""
    for line in iter_lines(path, what):
        yield line.number, line.value, line.error


def iter_lines(path: str | Path, what: str = "input file") -> Iterator[JsonLine]:
    """Every non-blank line of the file as a `JsonLine`, one at a time (see `iter_jsonl`). A line over
    `MAX_LINE_BYTES` is that line's error, never read whole."""
    path = open_jsonl(path, what)
    with open(path, "rb") as f:
        n, offset = 0, 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE_BYTES:
                size = len(raw) + _skip_line(f, raw)
                reason = (
                    f"the line is {_mib(size)} long, over the {_mib(MAX_LINE_BYTES)} limit for one line; give long "
                    "texts and audio as files, not inline."
                )
                yield JsonLine(n, None, f"{path.name} line {n}: {reason}", offset, size)
                offset += size
                continue
            size = len(raw)
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark is not an error
            if raw.strip():
                value, reason = parse_line(raw.rstrip(b"\r\n"))
                del raw  # the parsed value is all that is kept
                yield JsonLine(n, value, None if reason is None else f"{path.name} line {n}: {reason}", offset, size)
            offset += size


def read_line_at(path: str | Path, offset: int, size: int) -> bytes:
    """The bytes of the line at `offset` (from `iter_lines`), line end and a first line's byte-order mark removed."""
    with open(path, "rb") as f:
        raw = os.pread(f.fileno(), size, offset)
    if offset == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.rstrip(b"\r\n")


def _skip_line(f, head: bytes) -> int:
    """Reads past the rest of a line whose first bytes were `head`, a piece at a time; returns the bytes skipped."""
    skipped = 0
    while not head.endswith(b"\n"):
        head = f.readline(_SKIP_PIECE)
        if not head:
            break
        skipped += len(head)
    return skipped


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"
