"""The fingerprint of validated pairs: the key of cached reference log-probs (training/reference.py), computed a
pair at a time so a run can hash its pairs as validation streams them instead of holding them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

__all__ = ["PairHasher", "pair_fingerprint"]


class PairHasher:
    """`pair_fingerprint` a pair at a time (a training run hashes its pairs as validation streams them)."""

    def __init__(self):
        self._h = hashlib.sha256(b"qwen-audio-jax/pairs/v1\n")

    def update(self, p) -> None:
        for side, r in (("chosen", p.chosen), ("rejected", p.rejected)):
            rec = (
                None
                if r is None
                else [[int(t) for t in r.token_ids], r.num_prompt_tokens, [int(n) for n in r.mel_lengths]]
            )
            self._h.update(json.dumps([p.id, side, rec], separators=(",", ":")).encode())
            self._h.update(b"\n")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def pair_fingerprint(pairs: Sequence) -> str:
    """sha256 over ids, token ids, prompt/completion boundaries and mel lengths of all pairs, in order: the key of
    cached reference log-probs. Mel values are not hashed (float rounding may differ between hosts, which must agree
    on the key), so an audio file re-encoded in place at the same length keeps its fingerprint."""
    h = PairHasher()
    for p in pairs:
        h.update(p)
    return h.hexdigest()
