"""qwen_audio_jax.audio.load: formats, rates, channels, bad input, and the long-audio policy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax.audio.load import MAX_SAMPLES, SAMPLE_RATE, as_waveform, load_audio, split_long_audio
from qwen_audio_jax.errors import AudioError, ConfigError
from tests._paths import FIXTURE_AUDIO, fixture_clips, require_shared


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wav: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[spec.argmax()])


# ------------------------------------------------------------------------------------------ real clips (../shared)
@pytest.mark.parametrize("path", fixture_clips() or [FIXTURE_AUDIO / "absent"], ids=lambda p: p.name)
def test_fixture_clip_equals_librosa_load(path):
    """Every fixture (wav/flac/mp3, 16/24/48 kHz, stereo) loads exactly as the Qwen2-Audio README's librosa.load."""
    import librosa

    require_shared(path)
    wav = load_audio(path)
    info = sf.info(str(path))
    assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
    assert len(wav) == int(np.ceil(info.frames * SAMPLE_RATE / info.samplerate))
    np.testing.assert_array_equal(wav, librosa.load(path, sr=SAMPLE_RATE, mono=True)[0])


# ------------------------------------------------------------------------------------------ files written here
def test_wav_44k_stereo_downmix_and_resample(tmp_path):
    left, right = _sine(1000, 44100, 2.0, 0.6), _sine(1000, 44100, 2.0, 0.2)
    path = tmp_path / "stereo_44k.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.shape == (int(np.ceil(2.0 * 44100 * SAMPLE_RATE / 44100)),)
    assert abs(_peak_hz(wav) - 1000) <= 1.0
    expected = _sine(1000, SAMPLE_RATE, 2.0, 0.4)  # mean of the two channels
    np.testing.assert_allclose(wav[1000:-1000], expected[1000:-1000], atol=2e-3)


def test_flac_8k_upsampled(tmp_path):
    path = tmp_path / "tone_8k.flac"
    sf.write(path, _sine(440, 8000, 1.5), 8000)  # PCM_16 flac
    wav = load_audio(path)
    assert wav.shape == (24000,)
    assert abs(_peak_hz(wav) - 440) <= 1.0
    assert np.abs(wav[4000:20000]).max() == pytest.approx(0.5, abs=5e-3)
    assert np.abs(np.fft.rfft(wav[4000:20000]))[np.fft.rfftfreq(16000, 1 / 16000) > 4100].max() < 1.0  # no imaging


@pytest.mark.skipif("OGG" not in sf.available_formats(), reason="this libsndfile cannot write ogg/vorbis")
def test_ogg_vorbis(tmp_path):
    path = tmp_path / "tone.ogg"
    sf.write(path, _sine(660, 22050, 1.0), 22050, format="OGG", subtype="VORBIS")
    wav = load_audio(path)
    assert abs(len(wav) - SAMPLE_RATE) <= 16
    assert abs(_peak_hz(wav) - 660) <= 2.0


def test_resampling_48k_sine_frequency_length_amplitude(tmp_path):
    path = tmp_path / "sine_48k.wav"
    sf.write(path, _sine(1000, 48000, 3.0), 48000, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.shape == (48000,)  # 3 s at 16 kHz
    assert abs(_peak_hz(wav) - 1000) <= 0.5
    # soxr_hq is transparent at 1 kHz: away from the edges the result is the analytic 16 kHz sine.
    np.testing.assert_allclose(wav[800:-800], _sine(1000, SAMPLE_RATE, 3.0)[800:-800], atol=1e-3)


def test_downmix_is_channel_mean_at_16k(tmp_path):
    rng = np.random.default_rng(0)
    chans = (rng.standard_normal((16000, 3)) * 0.1).astype(np.float32)
    path = tmp_path / "three_channels.wav"
    sf.write(path, chans, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), chans.T.mean(axis=0, dtype=np.float32))


# ------------------------------------------------------------------------------------------ bad input
def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _bad_files(tmp_path):
    rng = np.random.default_rng(0)
    valid = tmp_path / "valid.wav"
    sf.write(valid, _sine(440, SAMPLE_RATE, 0.5), SAMPLE_RATE)
    nan = np.zeros(1000, np.float32)
    nan[5] = np.nan
    inf = np.zeros(1000, np.float32)
    inf[7] = -np.inf
    sf.write(tmp_path / "has_nan.wav", nan, 44100, subtype="FLOAT")
    sf.write(tmp_path / "has_inf.wav", inf, SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "no_samples.wav", np.zeros((0, 2), np.float32), 44100)
    (tmp_path / "a_directory.wav").mkdir()
    return {
        "missing": (tmp_path / "does_not_exist.wav", "no such audio file"),
        "directory": (tmp_path / "a_directory.wav", "directory"),
        "random_bytes": (_write_bytes(tmp_path / "random_bytes.wav", rng.bytes(4096)), "cannot decode"),
        "truncated_wav": (_write_bytes(tmp_path / "truncated.wav", valid.read_bytes()[:30]), "cannot decode"),
        "empty_file": (_write_bytes(tmp_path / "empty_file.flac", b""), "cannot decode"),
        "garbage_mp3": (_write_bytes(tmp_path / "garbage.mp3", b"ID3" + rng.bytes(300)), "cannot decode"),
        "zero_samples": (tmp_path / "no_samples.wav", "zero samples"),
        "nan": (tmp_path / "has_nan.wav", "NaN"),
        "inf": (tmp_path / "has_inf.wav", "infinite"),
    }


BAD_CASES = ["missing", "directory", "random_bytes", "truncated_wav", "empty_file", "garbage_mp3", "zero_samples"]


@pytest.mark.parametrize("case", [*BAD_CASES, "nan", "inf"])
def test_bad_file_raises_one_sentence_audio_error(tmp_path, case):
    path, expected = _bad_files(tmp_path)[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks out as a warning either
        with pytest.raises(AudioError) as err:
            load_audio(path)
    msg = str(err.value)
    assert path.name in msg and expected in msg
    assert "\n" not in msg and msg.endswith(".")


def test_truncated_mp3_fixture(tmp_path):
    src = require_shared(FIXTURE_AUDIO / "spanish_48k.mp3")
    path = _write_bytes(tmp_path / "cut.mp3", src.read_bytes()[:100])
    with pytest.raises(AudioError, match="cut.mp3"):
        load_audio(path)


# ------------------------------------------------------------------------------------------ arrays
def test_as_waveform_layouts_and_pcm():
    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal((2, 8000)) * 0.1).astype(np.float32)
    expected = stereo.mean(axis=0, dtype=np.float32)
    np.testing.assert_array_equal(as_waveform(stereo, SAMPLE_RATE), expected)  # (C, N)
    np.testing.assert_array_equal(as_waveform(stereo.T, SAMPLE_RATE), expected)  # (N, C)
    pcm = (rng.standard_normal(4000) * 3000).astype(np.int16)
    np.testing.assert_array_equal(as_waveform(pcm, SAMPLE_RATE), pcm.astype(np.float32) / 32768.0)
    out = as_waveform(np.zeros(10, np.float64), SAMPLE_RATE)
    assert out.dtype == np.float32 and out.shape == (10,)


def test_as_waveform_resamples_like_load_audio(tmp_path):
    wav48 = _sine(1000, 48000, 1.0)
    path = tmp_path / "s.wav"
    sf.write(path, wav48, 48000, subtype="FLOAT")
    np.testing.assert_array_equal(as_waveform(wav48, 48000), load_audio(path))


@pytest.mark.parametrize(
    "x, sr, expected",
    [
        (np.zeros(0, np.float32), SAMPLE_RATE, "zero samples"),
        (np.array([0.0, np.nan], np.float32), SAMPLE_RATE, "NaN"),
        (np.array([0.0, np.inf], np.float32), 48000, "infinite"),
        (np.zeros((2, 3, 4), np.float32), SAMPLE_RATE, "shape"),
        (np.array(["a", "b"]), SAMPLE_RATE, "dtype"),
        (np.zeros(10, np.float32), 0, "sample rate"),
    ],
    ids=["empty", "nan", "inf", "3d", "strings", "rate0"],
)
def test_as_waveform_rejects(x, sr, expected):
    with pytest.raises(AudioError, match=expected) as err:
        as_waveform(x, sr, source="request-17")
    assert "request-17" in str(err.value)


# ------------------------------------------------------------------------------------------ long audio
def test_short_clip_is_returned_unchanged():
    for n in (1, 16000, MAX_SAMPLES):
        wav = np.ones(n, np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for policy in ("truncate", "chunk"):
                out = split_long_audio(wav, policy)
                assert len(out) == 1 and out[0] is wav


def test_truncate_policy_warns_and_keeps_30s():
    wav = np.arange(45 * SAMPLE_RATE, dtype=np.float32)
    with pytest.warns(UserWarning, match=r"long_45s\.wav.*truncated"):
        out = split_long_audio(wav, "truncate", source="long_45s.wav")
    assert len(out) == 1 and out[0].shape == (MAX_SAMPLES,)
    np.testing.assert_array_equal(out[0], wav[:MAX_SAMPLES])


def test_chunk_policy_covers_the_whole_clip():
    wav = np.random.default_rng(0).standard_normal(2 * MAX_SAMPLES + 12345).astype(np.float32)
    out = split_long_audio(wav, "chunk", source="x")
    assert [len(c) for c in out] == [MAX_SAMPLES, MAX_SAMPLES, 12345]
    np.testing.assert_array_equal(np.concatenate(out), wav)
    exact = split_long_audio(wav[: 2 * MAX_SAMPLES], "chunk")
    assert [len(c) for c in exact] == [MAX_SAMPLES, MAX_SAMPLES]


def test_unknown_policy():
    with pytest.raises(ConfigError, match="truncate, chunk"):
        split_long_audio(np.zeros(10, np.float32), "drop")


def test_music_fixture_long_policy():
    wav = load_audio(require_shared(FIXTURE_AUDIO / "music_97s_16k.wav"))
    chunks = split_long_audio(wav, "chunk", source="music_97s_16k.wav")
    assert [len(c) for c in chunks[:-1]] == [MAX_SAMPLES] * 3 and 0 < len(chunks[-1]) <= MAX_SAMPLES
    np.testing.assert_array_equal(np.concatenate(chunks), wav)
    with pytest.warns(UserWarning, match="music_97s_16k.wav"):
        assert split_long_audio(wav, source="music_97s_16k.wav")[0].shape == (MAX_SAMPLES,)
