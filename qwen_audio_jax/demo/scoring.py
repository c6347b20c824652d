"""Held-out figures of the demo task: word error rate on the spoken clips, accuracy on the sounds.

Two accuracies on the sounds: the exact answer ("A steady tone at the note A4." must name the note too), and
the sound class the answer names (tone / chirp / noise / beeps), scored on the answers whose expected text names
one (not on "A4." to "Which musical note is this tone?").

One scorer for the demo command, the training script's held-out evaluation and the tests. Words are lower-cased
with punctuation dropped (so "Five, five six." reads as three words); the error count is the edit distance
(qwen_audio_jax/eval/metrics.py, the official scripts' `editdistance`) summed over the corpus and divided by the
number of reference words, as the official WER is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from qwen_audio_jax.eval.metrics import corpus_wer, edit_counts

__all__ = ["words", "sound_class", "score_answers"]

SPEECH_KINDS = ("digits", "words")
_CLASS_WORDS = (("tone", "tone"), ("chirp", "chirp"), ("noise", "noise"), ("beep", "beeps"), ("saying", "speech"))


def words(text: str | None) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", (text or "").lower()).split()


def sound_class(text: str | None) -> str:
    """The coarse class an answer names: tone / chirp / noise / beeps / speech, or other."""
    t = (text or "").lower()
    return next((cls for key, cls in _CLASS_WORDS if key in t), "other")


def score_answers(items: Iterable[tuple[str, str, str | None]]) -> dict:
    """items: (kind, expected, answer) triples; answer None for a request that failed (counted as wrong).

    Returns {"wer": {kind: WER}, "reference_words": {kind: n}, "accuracy": {"sounds": acc, kind: acc},
    "answers": {kind: n}, "sound_class": {"accuracy": acc, "answers": n}, "failed": n}; a kind with no item
    is absent ("sound_class" too, when no expected answer names a class).
    """
    counts: dict[str, list] = {}
    right: dict[str, list[bool]] = {}
    classes: list[bool] = []
    failed = 0
    for kind, expected, answer in items:
        failed += answer is None
        if kind in SPEECH_KINDS:
            counts.setdefault(kind, []).append(edit_counts(words(expected), words(answer)))
        else:
            ok = words(expected) == words(answer)
            right.setdefault(kind, []).append(ok)
            right.setdefault("sounds", []).append(ok)
            if sound_class(expected) != "other":
                classes.append(sound_class(expected) == sound_class(answer))
    figures = {
        "wer": {k: round(corpus_wer(c), 4) for k, c in counts.items() if corpus_wer(c) is not None},
        "reference_words": {k: sum(x.ref_len for x in c) for k, c in counts.items()},
        "accuracy": {k: round(sum(v) / len(v), 4) for k, v in right.items()},
        "answers": {k: len(v) for k, v in right.items()},
        "failed": failed,
    }
    if classes:
        figures["sound_class"] = {"accuracy": round(sum(classes) / len(classes), 4), "answers": len(classes)}
    return figures
