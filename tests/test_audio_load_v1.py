"""Qwen-Audio (v1) audio loading against the reference's own loader: QwenLM/Qwen-Audio `audio.py` `load_audio`
runs the ffmpeg binary (the command is written out below from that file) and divides its s16 output by 32768.

The ffmpeg binary is the oracle (CI installs it, .ci/run). Clips: non-16 kHz wav (16-bit and float), stereo
44.1 kHz, 8 kHz flac, an mp3, the real fixture clips when ../shared has them; compared sample for sample."""

from __future__ import annotations

import builtins
import subprocess

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax.audio import load_v1
from qwen_audio_jax.audio.load import load_audio
from qwen_audio_jax.audio.load_v1 import load_audio_v1
from qwen_audio_jax.errors import AudioError
from tests._oracles import require, require_binary
from tests._paths import fixture_clips
from tests._tokenizer_fixtures import qwen_v1_tok_dir, qwen_v1_tokenizer  # noqa: F401


def reference_load(path) -> np.ndarray:
    """QwenLM/Qwen-Audio@0b0e882 audio.py load_audio(file, sr=16000), verbatim in substance."""
    ffmpeg = require_binary("ffmpeg", "Qwen-Audio's audio loader (the v1 loading oracle)")
    cmd = [ffmpeg, "-nostdin", "-threads", "0", "-i", str(path), "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le"]
    out = subprocess.run(cmd + ["-ar", "16000", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.int16).flatten().astype(np.float32) / 32768.0


def _signal(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t + 1) + 0.02 * rng.standard_normal(t.shape)
    if channels == 2:
        x = np.stack([x, 0.5 * np.roll(x, 37)], axis=1)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("v1load")
    out = {}
    for name, sr, sec, ch, subtype in (
        ("24k_pcm16.wav", 24000, 1.3, 1, "PCM_16"),
        ("24k_float.wav", 24000, 1.1, 1, "FLOAT"),
        ("44k_stereo.wav", 44100, 1.2, 2, "PCM_16"),
        ("8k.flac", 8000, 0.9, 1, "PCM_16"),
        ("16k.wav", 16000, 1.0, 1, "PCM_16"),
        ("48k_pcm24.flac", 48000, 0.7, 2, "PCM_24"),
        ("22k_pcm32.wav", 22050, 0.6, 1, "PCM_32"),
    ):
        sf.write(d / name, _signal(sr, sec, ch, seed=sr), sr, subtype=subtype)
        out[name] = d / name
    ffmpeg = require_binary("ffmpeg", "the mp3 encoder of this test")
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(d / "44k_stereo.wav"), str(d / "a.mp3")], check=True)
    out["a.mp3"] = d / "a.mp3"
    return out


NAMES = ["24k_pcm16.wav", "24k_float.wav", "44k_stereo.wav", "8k.flac", "16k.wav", "48k_pcm24.flac", "22k_pcm32.wav"]
NAMES.append("a.mp3")


@pytest.mark.parametrize("name", NAMES)
def test_v1_loading_equals_qwen_audio_ffmpeg(clips, name):
    want = reference_load(clips[name])
    got = load_audio_v1(clips[name])
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", fixture_clips()[:6], ids=lambda p: p.name)
def test_v1_loading_of_the_real_clips(path):
    np.testing.assert_array_equal(load_audio_v1(path), reference_load(path))


def test_v1_loading_differs_from_the_qwen2_audio_loader(clips):
    """The reason for a second loader: librosa + soxr in float is not FFmpeg's resampler + s16 (item 2 of
    issue 23: a v1 model's greedy tokens changed at token 11 on a 24 kHz clip)."""
    a, b = load_audio(clips["24k_pcm16.wav"]), load_audio_v1(clips["24k_pcm16.wav"])
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(load_audio_v1(clips["16k.wav"]), load_audio(clips["16k.wav"]))  # no resampling


def test_without_pyav_the_ffmpeg_binary_is_used(clips, monkeypatch):
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("no av here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    for name in ("44k_stereo.wav", "a.mp3"):
        np.testing.assert_array_equal(load_audio_v1(clips[name]), reference_load(clips[name]))
    monkeypatch.setattr(load_v1.shutil, "which", lambda _: None)
    with pytest.raises(AudioError, match="pip install av.*install ffmpeg"):
        load_audio_v1(clips["a.mp3"])


def test_bad_files_are_audio_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio" * 4)
    with pytest.raises(AudioError, match="bad.wav: cannot decode"):
        load_audio_v1(bad)
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio_v1(tmp_path / "missing.mp3")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="zero samples"):
        load_audio_v1(empty)


def test_a_v1_processor_loads_files_the_v1_way(clips, qwen_v1_tokenizer):  # noqa: F811
    """The processor picks the loader by variant: a v1 prompt's mel is the reference front end's log-mel of the
    ffmpeg-loaded samples (tests/_v1_reference.py `features`); a Qwen2-Audio processor keeps librosa's loader."""
    require("torch", "the v1 oracle's front end")
    from qwen_audio_jax.text.processor import Processor
    from tests._v1_reference import features

    processor = Processor(qwen_v1_tokenizer)
    path = clips["24k_pcm16.wav"]
    p = processor.prepare({"prompt": f"<audio>{path}</audio><|startoftranscript|>"})
    want_mel, want_len = features(reference_load(path))
    assert p.mel_lengths == [want_len]
    np.testing.assert_allclose(p.mels[0][:, :want_len], want_mel.numpy()[:, :want_len], atol=1e-4, rtol=0)
