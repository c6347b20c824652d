"""A request's texts against its token budget, before anything costly: tokenizing costs about 200 bytes of memory
per byte of text (a 100 MB prompt line: 12.9 GB), so a text that cannot fit is refused from its length alone.

The test is a lower bound on tokens (`Tokenizer.min_tokens`: bytes / the longest token's bytes, 128 for Qwen's BPE),
so it never refuses a request that fits: what passes it is tokenized and judged on its exact count as before
(the engine's `check_request`, score's and training's limits). A completion is tokenized on its own, so its bound
adds to the prompt's.
"""

from __future__ import annotations

from collections.abc import Sequence

from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.text.tokenizer_base import Tokenizer

__all__ = ["TooLongError", "check_text_budget"]

MAX_UTF8 = 4  # bytes a character takes at most in UTF-8


class TooLongError(PromptError):
    """A request's texts certainly take more tokens than its budget (training reports it as "too long")."""


def check_text_budget(
    tokenizer: Tokenizer, prompt_texts: Sequence[str], completions: Sequence[str], budget: int | None
) -> None:
    """Raises TooLongError when the prompt's texts (a raw prompt, or the texts of chat turns: the rendered chat holds
    them all) and the longest completion certainly take more than `budget` tokens (None: no budget)."""
    if budget is None:
        return
    prompt_texts = [t for t in prompt_texts if isinstance(t, str)]
    completions = [c for c in completions if isinstance(c, str)]
    chars = sum(map(len, prompt_texts)) + max(map(len, completions), default=0)
    if chars * MAX_UTF8 <= budget:  # fits whatever the tokenizer (the common case: nothing more is computed)
        return
    least = tokenizer.min_tokens(prompt_texts) + max((tokenizer.min_tokens([c]) for c in completions), default=0)
    if least > budget:
        what = "the prompt and completion are" if completions else "the prompt is"
        raise TooLongError(
            f"{what} {chars:,} characters long: at least {least:,} tokens, more than the {budget:,} tokens this "
            "request can hold; shorten it."
        )
