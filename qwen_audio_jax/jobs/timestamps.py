"""Word-level timestamps from Qwen-Audio's `<|t.tt|>` tokens (SRWT: speech recognition with word timestamps).

The model writes times as special tokens around the words (`<|0.00|>mister<|0.42|><|0.42|>quilter<|0.95|>`,
0.01 s resolution, `<|0.00|>`..`<|30.00|>`). A word is the text between two time tokens: it starts at the one
before it and ends at the one after it; two time tokens in a row only move the start.
"""

from __future__ import annotations

import re

_TIME = re.compile(r"^<\|(\d+\.\d\d)\|>$")


def parse_word_timestamps(token_ids: list[int], tokenizer) -> list[dict] | None:
    """[{"word", "start", "end"}] for outputs that carry time tokens, else None."""
    times = {}
    for i, t in enumerate(token_ids):
        tok = tokenizer.id_to_token(t)
        m = _TIME.match(tok) if isinstance(tok, str) else None
        if m:
            times[i] = float(m.group(1))
    if not times:
        return None
    words, start, pending = [], None, []
    for i, t in enumerate(token_ids):
        if i in times:
            text = tokenizer.decode(pending, skip_special_tokens=True).strip() if pending else ""
            if text and start is not None:
                words.append({"word": text, "start": start, "end": times[i]})
            start, pending = times[i], []
        else:
            pending.append(t)
    return words
