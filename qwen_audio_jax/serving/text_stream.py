"""Token ids, as the engine hands them over, -> text deltas a client can print at once.

The text of a finished request is exactly `generate`'s: `tokenizer.decode(ids, skip_special_tokens=True)` of all
its ids (jobs/generate.py). While it runs, the deltas are the growing prefix of that decode: a trailing incomplete
UTF-8 character (decoded as U+FFFD) is held until its bytes are complete, and so are the last characters that could
still begin a stop string. So the deltas always concatenate to the final text.

Stop strings (OpenAI's `stop`) are the server's: the text ends before the first one found, the finish reason is
"stop", and the engine request is cancelled so its slot frees at once.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] = (), stop_ids: tuple[int, ...] = (), logprobs: bool = False):
        self.tokenizer, self.stop, self.stop_ids = tokenizer, stop, frozenset(stop_ids)
        self.logprobs = logprobs  # the request asked for them: logprob_entries gives nothing otherwise
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = ""  # text handed out so far
        self.stopped = False  # a stop string was found: the text is final

    def _text(self, ids) -> tuple[str, bool]:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        return (text[:cut], True) if cut >= 0 else (text, False)

    def _delta(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def push(self, ids: list[int]) -> str:
        """New ids -> the text that is now certain (maybe ""); sets `stopped` when a stop string appeared."""
        if self.stopped:
            return ""
        self.ids += ids
        text, self.stopped = self._text(self.ids)
        if self.stopped:
            return self._delta(text)
        text = text.rstrip("\ufffd")
        return self._delta(text[: len(text) - self.hold] if self.hold else text)

    def finish(self, ids: list[int] | None = None) -> str:
        """The rest of the text, from the request's final ids (None: the ids pushed so far)."""
        if not self.stopped:
            if ids is not None:
                self.ids = list(ids)
            text, self.stopped = self._text(self.ids)
            return self._delta(text)
        return ""

    @property
    def text(self) -> str:
        return self.sent

    def logprob_entries(self, ids: list[int], logprobs: list[float], top: list | None = None) -> list[dict]:
        """OpenAI's logprobs.content entries for `ids` (stop ids left out, as their text is); [] unless the request
        asked for log-probs. top: per id, its step's most likely [(id, log-prob)] (the request's top_logprobs)."""
        out = []
        for k, (i, lp) in enumerate(zip(ids, logprobs if self.logprobs else ())):
            if i in self.stop_ids:
                continue
            entry = self._entry(i, lp)
            entry["top_logprobs"] = [self._entry(j, alt) for j, alt in top[k]] if top else []
            out.append(entry)
        return out

    def _entry(self, i: int, logprob: float) -> dict:
        token = self.token(i)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    def token(self, i: int) -> str:
        """One id's text, special tokens included; "" for an id past the tokenizer's (an embedding's padding row,
        which a model can still choose: v1's tiktoken cannot decode those)."""
        if self.tokenizer.id_to_token(i) is None:
            return ""
        return self.tokenizer.decode([i], skip_special_tokens=False)
