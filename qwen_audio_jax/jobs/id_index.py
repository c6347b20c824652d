"""A compact map from request ids to small integers, for jobs over files of any size.

A Python dict of a million id strings costs ~100 MB (each str ~60 bytes, its int and its slot); this keeps 16
bytes of each id's BLAKE2b digest and an int64 value in sorted numpy arrays: 24 bytes an id, and a lookup is a
hash and a binary search. Two distinct ids share a 128-bit digest with probability ~n^2 / 2^129 (1e-27 for a
million ids), so the map is exact for any file a job will meet.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array
from collections.abc import Iterable

import numpy as np

__all__ = ["IdIndex"]


def _digest(rid: str) -> tuple[int, int]:
    d = hashlib.blake2b(rid.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


class IdIndex:
    """id -> value, built once from (id, value) pairs; a repeated id keeps its first value."""

    def __init__(self, pairs: Iterable[tuple[str, int]] = ()):
        hi, lo, values = array("Q"), array("Q"), array("q")
        for rid, value in pairs:
            h, low = _digest(rid)
            hi.append(h)
            lo.append(low)
            values.append(value)
        hi_a, lo_a = np.frombuffer(hi, np.uint64), np.frombuffer(lo, np.uint64)
        val_a = np.frombuffer(values, np.int64)
        order = np.lexsort((lo_a, hi_a))  # stable: equal digests stay in input order, the first one first
        hi_a, lo_a, val_a = hi_a[order], lo_a[order], val_a[order]
        first = np.ones(len(order), bool)
        first[1:] = (hi_a[1:] != hi_a[:-1]) | (lo_a[1:] != lo_a[:-1])
        # Kept as arrays of the standard library: bisect on them compares plain ints, several times faster per
        # lookup than numpy's scalar searchsorted (a job looks ids up a few times per line).
        kept = zip("QQq", (hi_a, lo_a, val_a))
        self._hi, self._lo, self._values = (array(code, x[first].tobytes()) for code, x in kept)

    def __len__(self) -> int:
        return len(self._hi)

    def get(self, rid: str, default: int | None = None) -> int | None:
        h, low = _digest(rid)
        i = bisect.bisect_left(self._hi, h)
        while i < len(self._hi) and self._hi[i] == h:
            if self._lo[i] == low:
                return self._values[i]
            i += 1
        return default

    def __contains__(self, rid: str) -> bool:
        return self.get(rid) is not None

    def values(self) -> np.ndarray:
        """Every id's value (in no particular order)."""
        return np.frombuffer(self._values, np.int64)
