"""Word-level timestamps from Qwen-Audio's `<|t.tt|>` tokens (SRWT: speech recognition with word timestamps).

The model writes times as special tokens around the words (`<|0.00|>mister<|0.42|><|0.42|>quilter<|0.95|>`,
0.01 s resolution, `<|0.00|>`..`<|30.00|>`). A word is the text between two time tokens: it starts at the one
before it and ends at the one after it; two time tokens in a row only move the start. The srwt preset's prompt
ends with `<|0.00|>` (docs/reference.md), so the output's first word starts at a time token of the prompt: pass the
prompt's ids and its last time token opens the first word.
"""

from __future__ import annotations

import re

_TIME = re.compile(r"^<\|(\d+\.\d\d)\|>$")


def _time(token_id: int, tokenizer) -> float | None:
    tok = tokenizer.id_to_token(token_id)
    m = _TIME.match(tok) if isinstance(tok, str) else None
    return float(m.group(1)) if m else None


def parse_word_timestamps(token_ids: list[int], tokenizer, prompt_ids: list[int] = ()) -> list[dict] | None:
    """[{"word", "start", "end"}] for outputs that carry time tokens, else None. `prompt_ids`: the request's
    prompt, whose last token, if it is a time token, is the first word's start."""
    times = {}
    for i, t in enumerate(token_ids):
        time = _time(t, tokenizer)
        if time is not None:
            times[i] = time
    if not times:
        return None
    words, start, pending = [], _time(int(prompt_ids[-1]), tokenizer) if len(prompt_ids) else None, []
    for i, t in enumerate(token_ids):
        if i in times:
            text = tokenizer.decode(pending, skip_special_tokens=True).strip() if pending else ""
            if text and start is not None:
                words.append({"word": text, "start": start, "end": times[i]})
            start, pending = times[i], []
        else:
            pending.append(t)
    return words
