"""Prepared requests and the padded batches made of them: what the processor hands to the model code.

`PreparedRequest` is one request, tokenized and featurized (text/processor.py makes them); `collate` pads several
into a `ModelInputs` batch, where prompt-length buckets plug in (`pad_to_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qwen_audio_jax.errors import ConfigError, PromptError

__all__ = ["PreparedRequest", "ModelInputs", "collate"]


@dataclass
class PreparedRequest:
    """One request, tokenized and featurized, not yet padded.

    token_ids: prompt (+ completion) ids, each audio placeholder already expanded to its N_i audio tokens.
    mels: one (M, 3000) float32 log-mel per clip, in the order the clips appear in `token_ids`.
    mel_lengths: valid mel frames per clip (L_i); N_i = num_audio_tokens(L_i).
    completion_mask: 1 on completion tokens, 0 on prompt tokens (None when no completion was given).
    num_prompt_tokens: len(prompt ids) (None when no completion was given).
    prompt_text: the prompt as text before expansion (the rendered chat for messages), for logs and debugging.
    """

    token_ids: list[int]
    mels: list[np.ndarray] = field(default_factory=list)
    mel_lengths: list[int] = field(default_factory=list)
    completion_mask: list[int] | None = None
    num_prompt_tokens: int | None = None
    prompt_text: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class ModelInputs:
    """A padded batch. B rows, T tokens, C clips (all clips of the batch, row-major), M mel bins.

    tokens: (B, T) int32; attention_mask: (B, T) int32 (1 = real token); mel: (C, M, 3000) float32 or None;
    mel_lengths: (C,) int32 or None; completion_mask: (B, T) int32 or None; clips_per_row: (B,) int32.
    """

    tokens: np.ndarray
    attention_mask: np.ndarray
    mel: np.ndarray | None = None
    mel_lengths: np.ndarray | None = None
    completion_mask: np.ndarray | None = None
    clips_per_row: np.ndarray | None = None


def collate(
    prepared: Sequence[PreparedRequest], *, pad_id: int, padding_side: str = "left", pad_to_length: int | None = None
) -> ModelInputs:
    """Pad prepared requests into one batch; `pad_to_length` fixes T (a bucket) instead of the longest row."""
    if not prepared:
        raise PromptError("cannot collate an empty batch; pass at least one prepared request")
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    longest = max(p.num_tokens for p in prepared)
    T = longest if pad_to_length is None else int(pad_to_length)
    if T < longest:
        i = max(range(len(prepared)), key=lambda k: prepared[k].num_tokens)
        raise PromptError(f"request {i} has {longest} tokens, more than pad_to_length={T}; use a longer bucket")
    B = len(prepared)
    tokens = np.full((B, T), pad_id, np.int32)
    mask = np.zeros((B, T), np.int32)
    has_completion = any(p.completion_mask is not None for p in prepared)
    completion = np.zeros((B, T), np.int32) if has_completion else None
    for i, p in enumerate(prepared):
        n = p.num_tokens
        cols = slice(T - n, T) if padding_side == "left" else slice(0, n)
        tokens[i, cols] = p.token_ids
        mask[i, cols] = 1
        if p.completion_mask is not None:
            completion[i, cols] = p.completion_mask
    clips = [m for p in prepared for m in p.mels]
    return ModelInputs(
        tokens=tokens,
        attention_mask=mask,
        mel=np.stack(clips).astype(np.float32, copy=False) if clips else None,
        mel_lengths=np.asarray([n for p in prepared for n in p.mel_lengths], np.int32) if clips else None,
        completion_mask=completion,
        clips_per_row=np.asarray([len(p.mels) for p in prepared], np.int32),
    )
