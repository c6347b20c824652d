"""Audio loading: any file or array -> float32 mono 16 kHz waveform, plus the long-audio policy.

The Qwen2-Audio README loads audio with `librosa.load(path, sr=16000)`; we do the same, so a clip loaded here is
bit-identical to what the reference pipeline feeds `WhisperFeatureExtractor`. librosa reads through soundfile
(libsndfile >= 1.1 decodes wav, flac, ogg/vorbis/opus and mp3), downmixes by averaging the channels, and resamples
with soxr ("soxr_hq"). Everything a user can get wrong raises `AudioError` with one sentence naming the input and
the fix; nothing else escapes from here.

A file may be decoded only as far as a caller needs (`load_audio_start`: the long-audio policy keeps at most its
first 30 s, or the clips the model's context can hold, audio/clips.py), so a small file of hours of silence never
costs its decoded length in memory. The samples kept are bit-identical to those of the whole file.

Shapes: a waveform is `(N,)` float32, N = number of samples at 16 kHz.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qwen_audio_jax.audio.constants import N_SAMPLES, SAMPLE_RATE
from qwen_audio_jax.choices import LONG_AUDIO_POLICIES
from qwen_audio_jax.errors import AudioError, ConfigError

MAX_SAMPLES = N_SAMPLES  # 30 s at 16 kHz: the Whisper window; the reference truncates everything past it.
# Sample rates an array may declare: up to 1 MHz (no audio format goes higher), and at least 1 kHz, so
# resampling to 16 kHz multiplies a clip's length by at most 16.
MIN_RATE, MAX_RATE = 1_000, 1_000_000
# Seconds of a file decoded past the samples a caller keeps: the resampler's output near the cut depends on input
# just after it (soxr_hq's filter spans milliseconds), so with this margin the kept samples equal the whole file's
# bit for bit (measured from 1 kHz to 1 MHz: 0.5 s suffices; FFmpeg's aresample for v1 files needs less).
DECODE_MARGIN_S = 2.0

__all__ = [
    "SAMPLE_RATE",
    "MAX_SAMPLES",
    "LONG_AUDIO_POLICIES",
    "LongAudioWarning",
    "load_audio",
    "load_audio_start",
    "AudioStart",
    "DECODE_MARGIN_S",
    "checked_path",
    "check_samples",
    "as_waveform",
    "split_long_audio",
]


class LongAudioWarning(UserWarning):
    """A clip over 30 s was truncated (the command line prints it as one `warning:` line naming the flag)."""


def check_samples(wav: np.ndarray, source: str) -> np.ndarray:
    """Reject empty and non-finite waveforms; `wav` is (N,) float32 (or (C, N) before the downmix)."""
    if wav.size == 0 or wav.shape[-1] == 0:
        raise AudioError(f"{source}: the audio has zero samples; pass a clip that contains at least one sample.")
    if not np.all(np.isfinite(wav)):
        kind = "NaN" if np.isnan(wav).any() else "infinite"
        raise AudioError(
            f"{source}: the audio contains {kind} samples; re-export or clean the clip so every sample is finite."
        )
    return wav


@dataclass(frozen=True)
class AudioStart:
    """The start of a clip, or all of it (`load_audio_start`).

    wav: (n,) float32 at 16 kHz; when the file was decoded only in part, its first `max_samples` samples (equal to
      the whole file's) and up to DECODE_MARGIN_S more, so `len(wav) > max_samples` says the clip is longer.
    seconds: the whole clip's duration: exact when `wav` is the whole clip, else from the file's header, or None
      when the container does not say.
    """

    wav: np.ndarray
    seconds: float | None


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Load an audio file as float32 mono at 16 kHz.

    Args:
      path: any file librosa/soundfile can decode (wav, flac, mp3, ogg, ...), any sample rate, any channel count.

    Returns:
      (N,) float32 waveform at `SAMPLE_RATE`; channels are averaged (librosa's `to_mono`), then resampled with
      soxr_hq, exactly as `librosa.load(path, sr=16000, mono=True)`.

    Raises:
      AudioError: the file is missing, is a directory or not a regular file (a FIFO would block forever), cannot
        be decoded, has zero samples, or holds NaN/Inf.
    """
    return load_audio_start(path, None).wav


def load_audio_start(path: str | os.PathLike, max_samples: int | None) -> AudioStart:
    """`load_audio`, decoding no more of the file than its first `max_samples` samples at 16 kHz need (None: all
    of it): a file of 10 hours costs what its first seconds cost. See `AudioStart`; raises as `load_audio`."""
    p = checked_path(path)
    # Decode at the native rate first so a NaN/Inf or empty file gets its own message (librosa's own check says
    # only "not finite", and soxr would smear a single NaN over the whole clip).
    native, native_sr, native_total = _decode(p, max_samples)
    wav = as_waveform(native, native_sr, source=str(p))
    if native_total is not None and native.shape[-1] >= native_total:  # the whole file
        return AudioStart(wav, len(wav) / SAMPLE_RATE)
    return AudioStart(wav, None if native_total is None else native_total / native_sr)


def checked_path(path: str | os.PathLike) -> Path:
    """`path` as a Path after the checks every loader makes first: it exists, is not a directory, and is a regular
    file (a FIFO or a device would block a decoder forever). Anything else raises AudioError naming the fix."""
    p = Path(path)
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative paths are resolved from {Path.cwd()})"
        raise AudioError(f"{p}: no such audio file; check the path{where}.")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file; pass the path of one audio file inside it.")
    try:
        mode = p.stat().st_mode
    except OSError as e:
        raise AudioError(f"{p}: cannot read this audio file ({e.strerror}).") from None
    if not stat.S_ISREG(mode):  # a FIFO or a device would block the decoder forever (and Ctrl-C with it)
        raise AudioError(
            f"{p}: is not a regular file (a pipe, a device or a socket); save the audio to a file and pass that."
        )
    return p


# Containers libsndfile decodes itself: when it rejects one of these the file is corrupt, and librosa's audioread
# fallback (deprecated, and it leaks the file handle on failure) would only hide soundfile's precise reason.
_SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".au", ".caf"}


def _native_frames(max_samples: int | None, sr: int) -> int:
    """Frames at `sr` to decode for the first `max_samples` samples at 16 kHz, the margin included (-1: all)."""
    if max_samples is None:
        return -1
    return math.ceil(max_samples * sr / SAMPLE_RATE) + math.ceil(DECODE_MARGIN_S * sr)


def _decode(p: Path, max_samples: int | None = None) -> tuple[np.ndarray, int, int | None]:
    """Decode `p` at its native rate, only as far as `max_samples` at 16 kHz need: returns ((N,) or (C, N) float32,
    sample rate, the file's frame count or None when unknown (then the decode may have stopped early)). Corrupt
    input -> AudioError."""
    import soundfile

    try:
        with soundfile.SoundFile(str(p)) as f:
            # What librosa.load(p, sr=None, mono=False) reads (its soundfile path), up to the frames needed.
            frames = _native_frames(max_samples, f.samplerate)
            wav = f.read(frames=frames, dtype="float32", always_2d=False).T
            return np.asarray(wav, dtype=np.float32), int(f.samplerate), int(f.frames)
    except Exception as exc:  # noqa: BLE001 -- LibsndfileError, RuntimeError...: all mean "soundfile can't"
        sf_error = exc
    if p.suffix.lower() not in _SOUNDFILE_SUFFIXES:
        import librosa  # imported lazily: librosa pulls in numba/scipy, which the model code never needs.

        # audioread's rate is known only once open: decode the seconds needed at any rate (no frame count).
        seconds = None if max_samples is None else max_samples / SAMPLE_RATE + 2 * DECODE_MARGIN_S
        try:
            with warnings.catch_warnings():
                # For other containers (m4a, webm...) librosa retries with audioread, which needs ffmpeg and warns
                # twice on the way; only the outcome matters to the user.
                warnings.filterwarnings("ignore", message="PySoundFile failed")
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                wav, sr = librosa.load(p, sr=None, mono=False, dtype=np.float32, duration=seconds)
            wav = np.asarray(wav, dtype=np.float32)
            cut = seconds is not None and wav.shape[-1] >= int(seconds * sr)  # then its length is unknown
            return wav, int(sr), None if cut else wav.shape[-1]
        except Exception:  # noqa: BLE001 -- soundfile, audioread, EOF...: all mean "unreadable"; soundfile says why
            pass
    raise AudioError(
        f"{p}: cannot decode this audio file ({_reason(sf_error)}); re-encode it as wav, flac, mp3 or ogg "
        "(e.g. `ffmpeg -i IN -ar 16000 -ac 1 OUT.wav`)."
    )


def _reason(exc: BaseException) -> str:
    """soundfile's diagnosis, shortened to a clause ("format not recognised")."""
    why = (str(exc).strip().splitlines() or [""])[0]
    why = why.split("': ", 1)[-1] if why.startswith("Error opening") else why  # soundfile repeats the path
    if "does not exist" in why:  # libsndfile's mpg123 decoder says this about any undecodable mp3 stream
        why = "no decodable audio stream"
    return why.rstrip(".").lower() or type(exc).__name__


def as_waveform(x: np.ndarray, sample_rate: int, source: str = "<array>") -> np.ndarray:
    """Validate an in-memory waveform and bring it to float32 mono 16 kHz.

    Args:
      x: (N,) mono, or 2-D multichannel audio in either layout: (C, N) as librosa returns it or (N, C) as
        soundfile returns it. The SHORTER axis is taken as the channel axis (a tie means (C, N)). Float arrays are
        taken as-is (nominally in [-1, 1]); int16 / int32 PCM is scaled by 1/32768 / 1/2**31 like soundfile does.
      sample_rate: the rate `x` was sampled at, in Hz.
      source: how to name this input in error messages (a file path, a request id...).

    Returns:
      (N',) float32 at `SAMPLE_RATE`: channels averaged, then resampled with soxr_hq (librosa.load's resampler).

    Raises:
      AudioError: not a numeric 1-D/2-D array, a sample rate outside [MIN_RATE, MAX_RATE], zero samples, or
        NaN/Inf samples.
    """
    x = np.asarray(x)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        x = x.astype(np.float32) / 2147483648.0
    elif not np.issubdtype(x.dtype, np.floating):
        raise AudioError(
            f"{source}: audio arrays must be float (or int16/int32 PCM), got dtype {x.dtype}; convert it with "
            "x.astype(np.float32)."
        )
    if x.ndim not in (1, 2):
        raise AudioError(
            f"{source}: expected a 1-D mono or 2-D (channels, samples) waveform, got shape {x.shape}; "
            "pass one clip at a time."
        )
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{source}: sample rate must be a positive integer in Hz, got {sample_rate!r}.")
    if not MIN_RATE <= sample_rate <= MAX_RATE:  # a huge rate stalls the resampler; a tiny one inflates the clip
        raise AudioError(
            f"{source}: sample rate {sample_rate} Hz is out of range: it must be in [{MIN_RATE}, {MAX_RATE}] Hz."
        )
    if x.ndim == 2 and x.shape[0] > x.shape[1]:
        x = x.T  # (N, C) -> (C, N)
    x = check_samples(x.astype(np.float32, copy=False), source)
    if x.ndim == 2:
        x = x.mean(axis=0, dtype=np.float32)  # librosa.to_mono: plain channel average
    if int(sample_rate) != SAMPLE_RATE:
        import librosa

        # res_type "soxr_hq" is librosa.load's default, so arrays and files follow the same path.
        x = librosa.resample(x, orig_sr=int(sample_rate), target_sr=SAMPLE_RATE, res_type="soxr_hq")
        x = np.asarray(x, dtype=np.float32)  # librosa keeps ceil(N * 16000 / sr) >= 1 samples
    return np.ascontiguousarray(x, dtype=np.float32)


def split_long_audio(
    wav: np.ndarray, policy: str = "truncate", source: str = "<array>", *, seconds: float | None = None
) -> list[np.ndarray]:
    """Apply the long-audio policy to one (N,) float32 waveform at 16 kHz.

    Args:
      wav: (N,) waveform.
      policy: "truncate" keeps the first 30 s (`MAX_SAMPLES`) and warns, which is what the reference does
        (WhisperFeatureExtractor has truncation=True, so anything past 30 s is silently ignored there; we at least
        say so). "chunk" cuts consecutive windows of `MAX_SAMPLES`, the last one shorter, covering the whole clip;
        each window becomes its own clip (its own <|AUDIO|> span downstream).
      source: how to name this clip in the warning.
      seconds: the whole clip's duration, named in the warning, when `wav` is only its start (`load_audio_start`;
        math.inf when the file does not say); None: `wav` is the whole clip.

    Returns:
      A list of (n_i,) float32 waveforms, each n_i <= MAX_SAMPLES. A clip of at most 30 s is returned as a
      one-element list holding the same array.

    Raises:
      ConfigError: unknown policy.
    """
    if policy not in LONG_AUDIO_POLICIES:
        raise ConfigError(f"unknown long-audio policy {policy!r}; use one of {', '.join(LONG_AUDIO_POLICIES)}.")
    n = int(wav.shape[0])
    if n <= MAX_SAMPLES:
        return [wav]
    if policy == "truncate":
        seconds = n / SAMPLE_RATE if seconds is None else seconds
        length = f"{seconds:.1f} s long" if math.isfinite(seconds) else f"longer than {n // SAMPLE_RATE} s"
        warnings.warn(
            f"{source} is {length} and was truncated to its first {MAX_SAMPLES // SAMPLE_RATE} s "
            '(as the reference does); pass --long-audio chunk (Python: long_audio="chunk") to use all of it as '
            "several 30 s clips.",
            LongAudioWarning,
            stacklevel=2,
        )
        return [wav[:MAX_SAMPLES]]
    return [wav[i * MAX_SAMPLES : (i + 1) * MAX_SAMPLES] for i in range(math.ceil(n / MAX_SAMPLES))]
