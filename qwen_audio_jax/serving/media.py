"""Audio parts of a request -> files the processor loads exactly as `generate` loads a request's files.

A clip sent inline (`input_audio` base64, a `data:audio/...;base64,` URL, an uploaded file) is written to a
private temporary directory that lives as long as the request is being prepared: the processor then decodes it
with the variant's own loader (librosa/soundfile for Qwen2-Audio, FFmpeg for Qwen-Audio v1), so a clip sent to the
server gives the same samples, features and tokens as the same file named in a `generate` request line. Paths
never reach the prompt's tokens (v1's `<audio>PATH</audio>` span becomes audio tokens), so the temporary name
changes nothing.

`file://` URLs are read in place, only under `--allowed-local-media-path`; http(s) URLs are fetched only with
`--allow-url-fetch`. Each clip's duration is checked against `--max-audio-seconds` while it is decoded (no further
than that), so a 10-hour upload costs what its first seconds cost.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path

from qwen_audio_jax.audio.constants import SAMPLE_RATE
from qwen_audio_jax.audio.load import load_audio_start
from qwen_audio_jax.audio.load_v1 import load_audio_v1_start
from qwen_audio_jax.errors import QwenAudioError
from qwen_audio_jax.serving.errors import invalid

# input_audio "format" / a data URL's MIME subtype -> the file suffix the decoders know it by
FORMATS = {
    "wav": ".wav",
    "wave": ".wav",
    "x-wav": ".wav",
    "vnd.wave": ".wav",
    "mp3": ".mp3",
    "mpeg": ".mp3",
    "flac": ".flac",
    "x-flac": ".flac",
    "ogg": ".ogg",
    "opus": ".opus",
    "webm": ".webm",
    "m4a": ".m4a",
    "mp4": ".m4a",
    "aac": ".aac",
    "aiff": ".aiff",
    "x-aiff": ".aiff",
}
_DATA_URL = re.compile(r"^data:audio/([\w.+-]+)(?:;[\w=.+-]+)*;base64,(.*)$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class MediaPolicy:
    max_audio_seconds: float
    max_clips: int
    allowed_local_media_path: Path | None = None
    allow_url_fetch: bool = False
    fetch_timeout: float = 10.0
    max_bytes: int = 64 * 2**20  # a fetched file, at most


class RequestFiles:
    """A request's temporary audio files (removed on close), its clip count and durations."""

    def __init__(self, policy: MediaPolicy, v1: bool):
        self.policy, self.v1 = policy, v1
        self._dir: str | None = None
        self.seconds: list[float] = []

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- sources -----------------------------------------------------------------------------------------------
    def from_bytes(self, data: bytes, suffix: str, param: str) -> str:
        """Inline audio -> a checked file path."""
        if not data:
            raise invalid("the audio is empty (0 bytes).", param)
        self._count(param)
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="qwen-audio-jax-serve-")
        path = os.path.join(self._dir, f"clip{len(self.seconds)}{suffix}")
        with open(path, "wb") as f:
            f.write(data)
        return self._checked(path, param)

    def from_base64(self, text, fmt, param: str) -> str:
        if not isinstance(text, str):
            raise invalid("input_audio.data must be a base64 string.", param)
        if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
            raise invalid(f"input_audio.format must be one of {', '.join(sorted(set(FORMATS)))}, got {fmt!r}.", param)
        return self.from_bytes(_b64(text, param), FORMATS[fmt.lower()], param)

    def from_url(self, url, param: str) -> str:
        if not isinstance(url, str) or not url:
            raise invalid("audio_url.url must be a non-empty string.", param)
        if url.startswith("data:"):
            m = _DATA_URL.match(url)
            if m is None:
                raise invalid("a data URL must read data:audio/<format>;base64,<data>.", param)
            fmt = m.group(1).lower()
            if fmt not in FORMATS:
                raise invalid(f"audio/{fmt} is not an audio format this server decodes.", param)
            return self.from_bytes(_b64(m.group(2), param), FORMATS[fmt], param)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "file":
            return self._local(url, param)
        if scheme in ("http", "https"):
            if not self.policy.allow_url_fetch:
                raise invalid(
                    "http(s) audio URLs are not fetched by this server (start it with --allow-url-fetch).", param
                )
            return self._fetch(url, param)
        raise invalid(f"audio URLs must be data:, file: or http(s): URLs, got {scheme or url[:20]!r}.", param)

    # ---- pieces --------------------------------------------------------------------------------------------------
    def _count(self, param: str) -> None:
        if len(self.seconds) >= self.policy.max_clips:
            raise invalid(f"too many audio clips: at most {self.policy.max_clips} per request.", param)

    def _local(self, url: str, param: str) -> str:
        root = self.policy.allowed_local_media_path
        if root is None:
            raise invalid(
                "file:// audio URLs are refused (start the server with --allowed-local-media-path DIR).", param
            )
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).resolve()
        if not path.is_relative_to(root.resolve()):
            raise invalid(f"{path} is not under the allowed local media path.", param)
        self._count(param)
        return self._checked(str(path), param)

    def _fetch(self, url: str, param: str) -> str:
        import httpx

        try:
            with httpx.stream("GET", url, timeout=self.policy.fetch_timeout, follow_redirects=True) as r:
                r.raise_for_status()
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > self.policy.max_bytes:
                        raise invalid(f"{url} is larger than {self.policy.max_bytes} bytes.", param)
        except httpx.HTTPError as e:
            raise invalid(f"cannot fetch {url}: {e}.", param) from None
        suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
        return self.from_bytes(bytes(data), suffix if suffix.lstrip(".") in FORMATS else ".wav", param)

    def _checked(self, path: str, param: str) -> str:
        """Decodes the file's start with the variant's loader: it must decode, and last at most max_audio_seconds."""
        limit = self.policy.max_audio_seconds
        cap = int(math.ceil(limit * SAMPLE_RATE))
        try:
            start = (load_audio_v1_start if self.v1 else load_audio_start)(path, cap)
        except QwenAudioError as e:
            shown = str(e).replace(path, "the audio") if self._dir and path.startswith(self._dir) else str(e)
            raise invalid(shown, param, code="invalid_audio") from None
        # The file's header says how long it is; if it does not, decoding past the cap says it is longer.
        known = start.seconds is not None
        seconds = start.seconds if known else len(start.wav) / SAMPLE_RATE
        if (seconds > limit) if known else len(start.wav) > cap:
            length = f"{seconds:.1f} s" if known else f"over {limit:g} s"
            raise invalid(
                f"the audio is {length} long; this server takes at most {limit:g} s per clip.",
                param,
                code="audio_too_long",
            )
        self.seconds.append(seconds)
        return path


def _b64(text: str, param: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("the audio data is not valid base64.", param, code="invalid_base64") from None
