"""A training run's data file, held as an index instead of parsed records, and validated as a stream.

A JSON Lines data file of a million records, parsed and held, costs gigabytes (each record a few dicts and
strings, each prepared pair its token ids as Python ints). A run holds instead, per usable record, where it lies
(line number, byte offset, size: 24 bytes) and an 8-byte digest of its line; example i is read, parsed and checked
again when the input pipeline asks for it (a few microseconds beside loading its audio). The digest says when the
file was changed under a running job: that is one clear error, never other examples trained on silently. A JSON
array file is parsed whole anyway (training/data.py bounds its size), so its examples are held as parsed.

`validate_file` runs validation over the index a window at a time (training/data.py `validation_outcomes`) and
keeps the indices of the usable examples, the report and the pairs' fingerprint: memory follows the window and
the number of records, not their content.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from qwen_audio_jax.errors import ConfigError, DataError
from qwen_audio_jax.jsonl import parse_line, read_line_at
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.training.data import (
    PreferenceExample,
    PreparedPair,
    ValidationReport,
    check_some_kept,
    example_id,
    scan_examples,
    validation_outcomes,
)
from qwen_audio_jax.training.fingerprint import PairHasher
from qwen_audio_jax.training.formats import parse_record

__all__ = ["ExampleFile", "validate_file"]


def _digest(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


class ExampleFile(Sequence):
    """The usable examples of a training data file, in order: `file[i]` is a `PreferenceExample` read from the file
    when asked for (safe from several threads). `on_bad(id, message)` hears of every record that cannot be used."""

    def __init__(self, path: str | Path, preference: bool, on_bad: Callable[[str, str], None] = lambda *_: None):
        self.path, self.preference = Path(path), preference
        self._base_dir = self.path.absolute().parent
        lines, offsets, sizes, digests = array("q"), array("q"), array("q"), array("Q")  # 32 bytes a record
        held: list[PreferenceExample] = []
        array_file = False
        for example, error, span in scan_examples(self.path, preference):
            if error is not None:
                on_bad(*error)
            elif span is None:  # a JSON array's record: parsed whole anyway
                held.append(example)
                array_file = True
            else:
                line, offset, size = span
                lines.append(line)
                offsets.append(offset)
                sizes.append(size)
                digests.append(_digest(read_line_at(self.path, offset, size)))
        self._held = held if array_file else None
        self._lines, self._offsets, self._sizes = (np.frombuffer(a, np.int64) for a in (lines, offsets, sizes))
        self._digests = np.frombuffer(digests, np.uint64)

    def __len__(self) -> int:
        return len(self._held) if self._held is not None else len(self._offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if self._held is not None:
            return self._held[i]
        i = range(len(self))[i]  # bounds and negative indices as a list has them
        line, offset, size = int(self._lines[i]), int(self._offsets[i]), int(self._sizes[i])
        raw = read_line_at(self.path, offset, size)
        value, reason = parse_line(raw) if _digest(raw) == self._digests[i] else (None, "changed")
        if reason is not None:
            raise DataError(
                f"{self.path} line {line} changed while the run was using it; the examples were checked when it "
                "started, so leave the data file alone while training runs, and start again."
            )
        request, chosen, rejected = parse_record(value, self._base_dir, self.preference)
        return PreferenceExample(example_id(value, self.path, line), request, chosen, rejected)

    def subset(self, indices: Sequence[int]) -> ExampleFile:
        """These examples only, in this order (the kept ones)."""
        out = object.__new__(ExampleFile)
        out.path, out.preference, out._base_dir = self.path, self.preference, self._base_dir
        idx = np.asarray(indices, np.int64)
        out._held = None if self._held is None else [self._held[k] for k in idx]
        keep = idx if self._held is None else idx[:0]  # a JSON array's index is empty
        out._lines, out._offsets, out._sizes = self._lines[keep], self._offsets[keep], self._sizes[keep]
        out._digests = self._digests[keep]
        return out


def validate_file(
    path: str | Path,
    processor: Processor,
    max_length: int,
    preference: bool,
    *,
    completion_suffix: str = "",
    workers: int = 8,
) -> tuple[ExampleFile, ValidationReport, str]:
    """The usable examples of the data file at `path` (an `ExampleFile` of the kept ones), the validation report and
    the kept pairs' fingerprint (training/fingerprint.py), as `validate_examples(read_examples(path), ...,
    keep_mels=False)` gives them, holding no example or pair beyond the validation window.

    Raises DataError: the file cannot be read, or no example survived."""
    if not isinstance(max_length, int) or max_length <= 0:
        raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
    report = ValidationReport(source=str(path), max_length=max_length)
    bad = [0]

    def on_bad(rid: str, message: str) -> None:
        bad[0] += 1
        report.add("bad_records", rid, message)

    data = ExampleFile(path, preference, on_bad)
    hasher, kept = PairHasher(), []
    outcomes = validation_outcomes(data, processor, max_length, completion_suffix, keep_mels=False, workers=workers)
    for i, (ex, outcome) in enumerate(outcomes):
        if isinstance(outcome, PreparedPair):
            kept.append(i)
            hasher.update(outcome)
        else:
            report.add(outcome[0], ex.id, outcome[1])
    report.total, report.kept = len(data) + bad[0], len(kept)
    check_some_kept(report)
    return data.subset(kept), report, hasher.hexdigest()
