"""Stand-in audio for training start-up: a request whose audio files are replaced by `Silence` of their 16 kHz
length, read from a file's header where that is exact, so validation counts the real tokens without decoding (or
allocating) what it can know from a header, and never more of a clip than the long-audio policy keeps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qwen_audio_jax.audio.clips import Silence
from qwen_audio_jax.audio.constants import SAMPLE_RATE
from qwen_audio_jax.audio.load import load_audio_start
from qwen_audio_jax.audio.load_v1 import load_audio_v1_start
from qwen_audio_jax.text.chat_template import v1_extract_audio_paths

__all__ = ["clip_samples_16k", "with_stand_in_audio"]

_HEADER_EXACT = (".wav", ".wave", ".flac")  # libsndfile's frame count is the decoded length


def clip_samples_16k(path: str | Path, v1: bool, max_samples: int | None = None) -> int:
    """How many 16 kHz samples the variant's loader gives for the file at `path`, read from its header where that
    is exact: a wav / flac clip's frame count at 16 kHz; resampled by librosa (Qwen2-Audio), the length
    `librosa.resample` keeps, ceil(n * (16000 / sr)) in floats as it computes it. Otherwise (mp3, ogg..., or v1's
    FFmpeg resampler) the clip is decoded, no further than `max_samples` (None: all of it): past that, its length
    comes from the container when it says, else the count is only known to be over `max_samples`. Raises
    AudioError for an unreadable file."""
    import soundfile

    p = Path(path)
    if p.suffix.lower() in _HEADER_EXACT and p.is_file():
        try:
            info = soundfile.info(str(p))
        except Exception:  # noqa: BLE001 -- the loader below names the problem
            info = None
        if info is not None and info.frames > 0:
            if info.samplerate == SAMPLE_RATE:
                return int(info.frames)
            if not v1:
                return int(np.ceil(info.frames * (float(SAMPLE_RATE) / info.samplerate)))
    start = (load_audio_v1_start if v1 else load_audio_start)(p, max_samples)
    if max_samples is None or len(start.wav) <= max_samples or start.seconds is None:
        return len(start.wav)
    return max(len(start.wav), round(start.seconds * SAMPLE_RATE))


def with_stand_in_audio(request: dict, v1: bool, max_samples: int | None = None) -> dict:
    """`request` with every audio file replaced by a `Silence` of the same 16 kHz length: the processor then gives
    the real token ids and mel lengths without decoding anything it can read from a header (and makes zeros only
    for what the long-audio policy keeps, at most `max_samples` and one)."""

    def stand_in(src):
        if not isinstance(src, (str, os.PathLike)):
            return src
        return Silence(clip_samples_16k(src, v1, max_samples), str(src))

    if "messages" in request:
        messages = []
        for m in request["messages"]:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = [
                    {**part, "audio": stand_in(part["audio"])}
                    if isinstance(part, dict) and part.get("type") == "audio" and "audio" in part
                    else part
                    for part in content
                ]
                m = {**m, "content": content}
            messages.append(m)
        return {**request, "messages": messages}
    if "prompt" in request:
        audio = request.get("audio")
        if audio is None and v1 and isinstance(request["prompt"], str):  # v1: the paths inside <audio>...</audio>
            audio = v1_extract_audio_paths(request["prompt"])
        if isinstance(audio, list):
            return {**request, "audio": [stand_in(a) for a in audio]}
    return request
