"""Qwen-Audio (v1) audio loading, as Qwen-Audio's own `audio.py` does it.

The reference (QwenLM/Qwen-Audio `audio.py` `load_audio`, docs/reference.md §3.2) runs

    ffmpeg -nostdin -threads 0 -i FILE -f s16le -ac 1 -acodec pcm_s16le -ar 16000 -

and divides the signed 16-bit samples by 32768: FFmpeg's decoder, its channel downmix and its resampler
(libswresample), then a 16-bit quantisation. Qwen2-Audio's loader (librosa + soxr in float, `audio/load.py`) gives
different samples for any clip that is not already 16 kHz mono 16-bit, enough to change a v1 model's greedy tokens.

Here the same FFmpeg libraries do the work through PyAV (a dependency: its wheel ships libavcodec and
libswresample), with one setting pinned: libswresample's internal sample format. FFmpeg up to 7.0 picks it from
the input (16-bit or narrower input -> s16p, 32-bit integer or float -> fltp, double -> dblp); the FFmpeg inside
current PyAV wheels picks fltp for 16-bit input too, which moves samples by 1-2 LSB. Pinning the older rule
gives the samples of the `ffmpeg` command the reference runs (tested sample for sample against the ffmpeg 5.1
binary on 16-, 24-, 32-bit and float wav / flac and mp3 at 8 to 48 kHz, mono and stereo, and the real clips).
Without PyAV the `ffmpeg` binary itself is run; with neither, AudioError says what to install. In-memory arrays
are not touched by this module (the reference only loads files).

`load_audio_v1_start` stops decoding once it has the samples a caller keeps (plus DECODE_MARGIN_S): libswresample
streams, so the samples it has given out are final, and equal the whole file's.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import numpy as np

from qwen_audio_jax.audio.constants import SAMPLE_RATE
from qwen_audio_jax.audio.load import DECODE_MARGIN_S, AudioStart, check_samples, checked_path
from qwen_audio_jax.errors import AudioError

__all__ = ["load_audio_v1", "load_audio_v1_start", "ffmpeg_command", "swr_internal_format"]


def ffmpeg_command(path: str) -> list[str]:
    """Qwen-Audio's decode command for `path`, verbatim (audio.py `load_audio`)."""
    return ["ffmpeg", "-nostdin", "-threads", "0", "-i", path, "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le"] + [
        "-ar",
        str(SAMPLE_RATE),
        "-",
    ]


def swr_internal_format(input_format: str) -> str:
    """libswresample's internal sample format for `input_format` (an FFmpeg name: s16, s16p, fltp...) and a
    16-bit output, by FFmpeg <= 7.0's rule in swr_init."""
    base = input_format[:-1] if input_format.endswith("p") else input_format
    if base in ("u8", "s16"):  # <= 2 bytes in and out
        return "s16p"
    return "fltp" if base in ("s32", "flt") else "dblp"  # <= 4 bytes (s32p only for an s32 output), else double


def load_audio_v1(path: str | os.PathLike) -> np.ndarray:
    """A file -> (N,) float32 mono 16 kHz, equal to Qwen-Audio's `load_audio(path)`.

    Raises AudioError: the file is missing / not a regular file / undecodable / empty / non-finite, or neither PyAV
    nor the ffmpeg binary is available."""
    return load_audio_v1_start(path, None).wav


def load_audio_v1_start(path: str | os.PathLike, max_samples: int | None) -> AudioStart:
    """`load_audio_v1`, decoding no more of the file than its first `max_samples` samples need (None: all of it);
    see audio/load.py `AudioStart`. Raises as `load_audio_v1`."""
    p = checked_path(path)
    try:
        import av
    except ImportError:
        av = None
    # Stop once the samples kept and the margin are out: a 10-hour file costs what its first seconds cost.
    limit = None if max_samples is None else max_samples + math.ceil(DECODE_MARGIN_S * SAMPLE_RATE)
    seconds = None  # the whole clip's duration, when the decode stopped early and the container says
    if av is not None:
        pcm, seconds = _decode_pyav(av, str(p), limit)
    elif shutil.which("ffmpeg"):
        pcm = _decode_ffmpeg(str(p), limit)
    else:
        raise AudioError(
            f"{p}: Qwen-Audio (v1) models load audio with FFmpeg, and neither PyAV nor the ffmpeg binary is "
            "available; `pip install av` (its wheel ships FFmpeg) or install ffmpeg (e.g. `apt-get install ffmpeg`)."
        )
    wav = check_samples(pcm.astype(np.float32) / 32768.0, str(p))
    if limit is None or len(wav) < limit:  # the whole file
        return AudioStart(wav, len(wav) / SAMPLE_RATE)
    return AudioStart(wav, seconds)


def _decode_pyav(av, path: str, limit: int | None = None) -> tuple[np.ndarray, float | None]:
    """The first audio stream decoded, downmixed, resampled and quantised by libswresample -> (int16 (N,), the
    container's duration in seconds or None). With `limit`, decoding stops once that many samples are out (never
    flushed: every sample given out is final)."""
    chunks: list[np.ndarray] = []
    seconds = None
    try:
        with av.open(path) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(f"{path}: the file has no audio stream; pass an audio file.")
            if container.duration:  # in AV_TIME_BASE units (microseconds)
                seconds = container.duration / 1_000_000
            graph, out = None, 0
            for frame in container.decode(stream):
                if graph is None:
                    graph = _graph(av, frame)
                graph.push(frame)
                out += _drain(av, graph, chunks)
                if limit is not None and out >= limit:
                    break
            else:
                if graph is not None:
                    graph.push(None)
                    _drain(av, graph, chunks)
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 -- av.error.*, OSError, ValueError: all mean "cannot decode"
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AudioError(
            f"{path}: cannot decode this audio file ({why}); re-encode it as wav, flac or mp3 "
            "(e.g. `ffmpeg -i IN -ar 16000 -ac 1 OUT.wav`)."
        ) from None
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return (pcm if limit is None else pcm[:limit]), seconds


def _graph(av, frame):
    """abuffer -> aresample (16 kHz, the pinned internal format) -> aformat (s16, mono) -> abuffersink: the filters
    the ffmpeg command line builds for `-ar 16000 -ac 1 -acodec pcm_s16le`."""
    graph = av.filter.Graph()
    src = graph.add_abuffer(format=frame.format.name, layout=frame.layout.name, sample_rate=frame.sample_rate)
    internal = swr_internal_format(frame.format.name)
    resample = graph.add("aresample", f"{SAMPLE_RATE}:internal_sample_fmt={internal}")
    fmt = graph.add("aformat", f"sample_fmts=s16:sample_rates={SAMPLE_RATE}:channel_layouts=mono")
    sink = graph.add("abuffersink")
    src.link_to(resample)
    resample.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    return graph


def _drain(av, graph, chunks: list) -> int:
    """Pulls what the graph has ready into `chunks`; returns how many samples that was."""
    n = 0
    while True:
        try:
            out = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return n
        chunks.append(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        n += len(chunks[-1])


def _decode_ffmpeg(path: str, limit: int | None = None) -> np.ndarray:
    command = ffmpeg_command(path)
    if limit is not None:  # an output duration: ffmpeg stops there (the samples before it are unchanged)
        command = command[:-1] + ["-t", f"{limit / SAMPLE_RATE:.6f}", command[-1]]
    try:
        out = subprocess.run(command, capture_output=True, check=True, stdin=subprocess.DEVNULL).stdout
    except subprocess.CalledProcessError as exc:
        lines = exc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"{path}: ffmpeg cannot decode this audio file ({lines[-1] if lines else exc}).") from None
    return np.frombuffer(out, np.int16).copy()
