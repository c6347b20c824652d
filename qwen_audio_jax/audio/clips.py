"""One audio input -> the clips the long-audio policy keeps, decoding no more of a file than they need.

"truncate" keeps the first 30 s, so a file is decoded to 30 s (and a margin that keeps the resampled samples
bit-identical, audio/load.py `DECODE_MARGIN_S`), whatever its length: a 2 MB FLAC of 10 hours of silence costs
what 32 s cost, not 2.3 GB of float samples. "chunk" keeps consecutive 30 s clips, as many as the request's token
budget can hold: each full clip is `CLIP_TOKENS` tokens in the prompt, so audio longer than
`budget // CLIP_TOKENS + 1` clips cannot fit whatever the text; it is refused once that much is decoded, as the
request's error, instead of being decoded whole to be refused later for its token count.

`Silence(samples)` stands for a clip whose samples do not matter (training start-up counts tokens from a file's
header): the policy is applied to its length without allocating more of it than the policy keeps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from qwen_audio_jax.audio.constants import N_FRAMES, SAMPLE_RATE
from qwen_audio_jax.audio.lengths import num_audio_tokens
from qwen_audio_jax.audio.load import MAX_SAMPLES, load_audio_start, split_long_audio
from qwen_audio_jax.audio.load_v1 import load_audio_v1_start
from qwen_audio_jax.errors import AudioError

__all__ = ["CLIP_TOKENS", "Silence", "kept_samples", "file_clips", "policy_clips"]

# Prompt tokens of one full 30 s clip: its audio tokens and the <|audio_bos|> / <|audio_eos|> (v1: <audio>,
# </audio>) around them.
CLIP_TOKENS = num_audio_tokens(N_FRAMES) + 2


@dataclass(frozen=True)
class Silence:
    """A stand-in clip of `samples` zeros at 16 kHz (only its length matters); `source` names the file it stands
    for in warnings and errors."""

    samples: int
    source: str | None = None


def kept_samples(policy: str, max_tokens: int | None) -> int | None:
    """The most 16 kHz samples of one input the policy can use with a `max_tokens` budget (None: no bound).

    truncate: 30 s. chunk: one clip more than the budget can hold, so that audio longer than this is certainly
    too long (it has more full clips than fit) while anything shorter is judged on its exact token count."""
    if policy == "truncate":
        return MAX_SAMPLES
    if max_tokens is None:
        return None
    return (max(0, max_tokens) // CLIP_TOKENS + 1) * MAX_SAMPLES


def file_clips(path: str | os.PathLike, policy: str, *, v1: bool, max_tokens: int | None = None) -> list[np.ndarray]:
    """The clips of the audio file at `path` under `policy`, loaded as the variant's reference loads files (v1:
    FFmpeg), decoded only as far as the policy keeps. Raises AudioError (unreadable, or too long for chunk)."""
    cap = kept_samples(policy, max_tokens)
    start = (load_audio_v1_start if v1 else load_audio_start)(path, cap)
    seconds = start.seconds
    if seconds is None and cap is not None and len(start.wav) > cap:  # stopped early; the file does not say
        seconds = math.inf
    return policy_clips(start.wav, policy, str(path), max_tokens=max_tokens, seconds=seconds)


def policy_clips(
    wav: np.ndarray | Silence,
    policy: str,
    source: str,
    *,
    max_tokens: int | None = None,
    seconds: float | None = None,
) -> list[np.ndarray]:
    """`split_long_audio` with the chunk policy's bound: a (n,) float32 16 kHz waveform (or a `Silence`) longer
    than `kept_samples` is refused (AudioError) under chunk. `seconds`: the whole clip's duration when `wav` is
    only its start (math.inf: unknown)."""
    cap = kept_samples(policy, max_tokens)
    n = wav.samples if isinstance(wav, Silence) else len(wav)
    if isinstance(wav, Silence) and seconds is None:
        seconds = n / SAMPLE_RATE  # whatever part of it is made below
    if policy == "chunk" and cap is not None and n > cap:
        whole = n / SAMPLE_RATE if seconds is None else seconds  # None: `wav` is the whole clip
        length = f"{whole:.1f} s" if math.isfinite(whole) else f"over {cap // SAMPLE_RATE} s"
        fits = (cap - MAX_SAMPLES) // SAMPLE_RATE  # the longest audio whose full clips alone fit
        raise AudioError(
            f"{source} is {length} long: as 30 s clips (--long-audio chunk) it takes more than the {max_tokens} "
            f"tokens this request can hold (each clip takes {CLIP_TOKENS}); "
            + (f"cut it into parts of at most {fits} s." if fits else "shorten it.")
        )
    if isinstance(wav, Silence):  # zeros only for what is kept, and one more to say "longer" (the warning)
        wav = np.zeros(n if cap is None else min(n, cap + 1), np.float32)
    return split_long_audio(wav, policy, source, seconds=seconds)
