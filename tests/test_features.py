"""qwen_audio_jax.audio.features against transformers' WhisperFeatureExtractor (the oracle) and librosa.

Tolerances are fixed: 1e-6 for filter banks, 1e-4 (max abs) for log-mel features. The float32 torch path of the
extractor is itself up to ~5e-5 (real clips) .. ~8e-5 (tonal synthetic clips) away from a float64 STFT, so 1e-4
leaves room for one independent float32 implementation that rounds like it (same float32 Hann window) and
nothing else.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax.audio.features import (
    N_FRAMES,
    N_SAMPLES,
    frame_mask,
    log_mel_jax,
    log_mel_numpy,
    mel_filter_bank,
    mel_length,
    pad_batch,
)
from qwen_audio_jax.audio.load import load_audio
from qwen_audio_jax.errors import ConfigError
from tests._oracles import require
from tests._paths import FIXTURE_AUDIO, MEL_FILTERS_NPZ, fixture_clips, require_shared

FEATURE_TOL = 1e-4
FILTER_TOL = 1e-6


@functools.cache
def _extractor(n_mels: int):
    transformers = require("transformers", "the parity oracle")
    require("torch", "the parity oracle")  # the extractor's default path when torch is installed
    return transformers.WhisperFeatureExtractor(feature_size=n_mels)


def _reference(wav: np.ndarray, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    out = _extractor(n_mels)(
        wav, sampling_rate=16000, return_tensors="np", padding="max_length", return_attention_mask=True
    )
    return out["input_features"][0], out["attention_mask"][0].astype(bool)


def _synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    t = lambda n: np.arange(n) / 16000.0  # noqa: E731
    return {
        "silence": np.zeros(5 * 16000, np.float32),
        "sine_440": (0.5 * np.sin(2 * np.pi * 440 * t(7 * 16000))).astype(np.float32),
        "white_noise": (0.1 * rng.standard_normal(12 * 16000)).astype(np.float32),
        "quiet_noise": (1e-4 * rng.standard_normal(3 * 16000)).astype(np.float32),
        "one_sample": np.array([0.25], np.float32),
        "exactly_30s": (0.3 * np.sin(2 * np.pi * 1234.5 * t(N_SAMPLES)) + 0.02 * rng.standard_normal(N_SAMPLES)).astype(
            np.float32
        ),
        "45s": (0.2 * np.sin(2 * np.pi * 220 * t(45 * 16000)) + 0.05 * rng.standard_normal(45 * 16000)).astype(
            np.float32
        ),
    }


def _check_parity(wavs: dict[str, np.ndarray], n_mels: int) -> None:
    batch, lengths = pad_batch(list(wavs.values()))
    ours_jax = np.asarray(log_mel_jax(jnp.asarray(batch), n_mels=n_mels))
    assert ours_jax.shape == (len(wavs), n_mels, N_FRAMES) and ours_jax.dtype == np.float32
    for i, (name, wav) in enumerate(wavs.items()):
        ref, ref_mask = _reference(wav, n_mels)
        ours_np = log_mel_numpy(wav, n_mels)
        assert ours_np.shape == ref.shape == (n_mels, N_FRAMES), name
        d_np, d_jax = np.abs(ours_np - ref).max(), np.abs(ours_jax[i] - ref).max()
        assert d_np <= FEATURE_TOL, f"{name}: log_mel_numpy differs from the extractor by {d_np:.2e}"
        assert d_jax <= FEATURE_TOL, f"{name}: log_mel_jax differs from the extractor by {d_jax:.2e}"
        assert np.abs(ours_np - ours_jax[i]).max() <= FEATURE_TOL, name
        np.testing.assert_array_equal(frame_mask(lengths[i]), ref_mask, err_msg=name)


# ------------------------------------------------------------------------------------------ filter banks
def test_filter_bank_80_matches_qwen_audio_npz():
    mel_80 = np.load(require_shared(MEL_FILTERS_NPZ))["mel_80"]  # (80, 201), shipped with Qwen-Audio's audio.py
    ours = mel_filter_bank(80)
    assert ours.shape == (201, 80) and ours.dtype == np.float32
    assert np.abs(ours - mel_80.T).max() <= FILTER_TOL


@pytest.mark.parity
@pytest.mark.parametrize("n_mels", [128, 80])
def test_filter_bank_matches_transformers_and_librosa(n_mels):
    import librosa

    ours = mel_filter_bank(n_mels)
    assert ours.shape == (201, n_mels)
    assert np.abs(ours - _extractor(n_mels).mel_filters).max() <= FILTER_TOL
    assert np.abs(ours - librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels).T).max() <= FILTER_TOL


def test_filter_bank_is_cached_and_not_shared_mutably():
    a = mel_filter_bank(128)
    a[:] = 0  # a caller scribbling on its copy must not corrupt the cache
    assert mel_filter_bank(128).max() > 0


# ------------------------------------------------------------------------------------------ lengths and masks
@pytest.mark.parametrize(
    "num_samples, ceil, floor",
    [
        (1, 1, 0),
        (159, 1, 0),
        (160, 1, 1),
        (161, 2, 1),
        (64800, 405, 405),
        (64801, 406, 405),
        (N_SAMPLES, 3000, 3000),
        (N_SAMPLES + 1000, 3000, 3000),
    ],
)
def test_mel_length_rules(num_samples, ceil, floor):
    assert mel_length(num_samples) == mel_length(num_samples, "ceil") == ceil
    assert mel_length(num_samples, "floor") == floor


def test_mel_length_unknown_rule():
    with pytest.raises(ConfigError, match="ceil"):
        mel_length(100, "round")


@pytest.mark.parity
@pytest.mark.parametrize("num_samples", [1, 159, 160, 161, 64800, 479999, N_SAMPLES, 720000])
def test_frame_mask_matches_extractor_attention_mask(num_samples):
    _, ref_mask = _reference(np.full(num_samples, 0.1, np.float32), 128)
    mask = frame_mask(num_samples)
    assert mask.shape == (N_FRAMES,) and mask.dtype == bool
    np.testing.assert_array_equal(mask, ref_mask)
    assert mask.sum() == mel_length(num_samples)


def test_pad_batch():
    wavs = [np.ones(5, np.float32), np.arange(N_SAMPLES + 7, dtype=np.float64)]
    batch, lengths = pad_batch(wavs)
    assert batch.shape == (2, N_SAMPLES) and batch.dtype == np.float32
    assert lengths.dtype == np.int32 and lengths.tolist() == [5, N_SAMPLES]
    assert (batch[0, :5] == 1).all() and (batch[0, 5:] == 0).all()
    np.testing.assert_array_equal(batch[1], np.arange(N_SAMPLES, dtype=np.float32))


# ------------------------------------------------------------------------------------------ log-mel parity
def test_silence_is_exactly_minus_1_5():
    silence = np.zeros(16000, np.float32)
    assert (log_mel_numpy(silence) == -1.5).all()
    assert (np.asarray(log_mel_jax(jnp.zeros((2, N_SAMPLES), jnp.float32))) == -1.5).all()


@pytest.mark.parity
def test_silence_reference_is_exactly_minus_1_5():
    assert (_reference(np.zeros(16000, np.float32), 128)[0] == -1.5).all()


@pytest.mark.parity
@pytest.mark.parametrize("n_mels", [128, 80])
def test_parity_synthetic(n_mels):
    _check_parity(_synthetic(), n_mels)


@pytest.mark.parity
@pytest.mark.parametrize("n_mels", [128, 80])
def test_parity_fixture_clips(n_mels):
    require_shared(FIXTURE_AUDIO)
    clips = fixture_clips()
    if not clips:
        pytest.skip(f"no clips in {FIXTURE_AUDIO}")
    _check_parity({p.name: load_audio(p) for p in clips}, n_mels)


def test_numpy_and_jax_agree_without_torch():
    """Always runs (no transformers needed): the two implementations of this package agree."""
    wavs = _synthetic()
    batch, _ = pad_batch(list(wavs.values()))
    ours_jax = np.asarray(log_mel_jax(jnp.asarray(batch), n_mels=80))
    for i, wav in enumerate(wavs.values()):
        assert np.abs(log_mel_numpy(wav, 80) - ours_jax[i]).max() <= FEATURE_TOL


def test_padding_frames_sit_at_the_floor():
    """Frames wholly inside the zero padding equal (max - 8 + 4) / 4, the per-example floor over the full 30 s."""
    wav = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    feats = log_mel_numpy(wav)
    floor = feats.max() - 2.0  # (max - 8 + 4) / 4 == feats.max() - 2 in the scaled domain
    np.testing.assert_allclose(feats[:, 200:], floor, atol=1e-6)


def _log_mel_over_30s(wav: np.ndarray, n_mels: int) -> np.ndarray:
    """The textbook float64 computation over every one of the 3000 frames (what log_mel_numpy shortcuts)."""
    from qwen_audio_jax.audio.features import _hann_window, _mel_filter_bank_f64

    x = np.zeros(N_SAMPLES, np.float32)
    x[: min(len(wav), N_SAMPLES)] = wav[:N_SAMPLES]
    xp = np.pad(x.astype(np.float64), 200, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(xp, 400)[::160][:N_FRAMES]
    spec = np.fft.rfft(frames * _hann_window().astype(np.float64), axis=-1)
    mel = (spec.real**2 + spec.imag**2) @ _mel_filter_bank_f64(n_mels, 16000, 400)
    logmel = np.log10(np.maximum(mel, 1e-10)).T
    return ((np.maximum(logmel, logmel.max() - 8.0) + 4.0) / 4.0).astype(np.float32)


@pytest.mark.parametrize("n_mels", [128, 80])
def test_short_clips_skip_silent_frames_exactly(n_mels):
    """log_mel_numpy computes only the frames a clip reaches; the result is bit-identical to all 3000, at every
    length around the frame edges and around the 30 s end (where the reflect padding reads the clip again)."""
    rng = np.random.default_rng(7)
    lengths = [0, 1, 159, 160, 161, 200, 201, 399, 400, 401, 16000, 40037]
    lengths += [N_SAMPLES - d for d in (601, 600, 599, 401, 400, 399, 201, 200, 199, 1, 0)] + [N_SAMPLES + 5]
    for n in lengths:
        wav = (0.1 * rng.standard_normal(n)).astype(np.float32)
        np.testing.assert_array_equal(log_mel_numpy(wav, n_mels), _log_mel_over_30s(wav, n_mels), err_msg=str(n))


# ------------------------------------------------------------------------------------------ compilation
def test_log_mel_jax_compiles_once_per_shape():
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.standard_normal((3, N_SAMPLES)).astype(np.float32)) for _ in range(3)]
    log_mel_jax(batches[0], n_mels=80).block_until_ready()
    size = log_mel_jax._cache_size()
    for b in batches[1:] + batches[:1]:
        log_mel_jax(b, n_mels=80).block_until_ready()
    assert log_mel_jax._cache_size() == size  # new data, same (B, 480000) shape: no retrace, no recompile


def test_log_mel_jax_rejects_unpadded_input():
    with pytest.raises(ValueError, match="pad_batch"):
        log_mel_jax(jnp.zeros((2, 16000), jnp.float32))
    assert jax.default_backend() in ("cpu", "gpu", "tpu")


def test_batched_accelerator_path_matches_cpu_loop():
    """log_mel_jax vmaps on GPU/TPU and loops clip by clip on CPU; both paths compute the same numbers."""
    from qwen_audio_jax.audio.features import _hann_window, _log_mel_one

    batch, _ = pad_batch([_synthetic()["white_noise"], _synthetic()["sine_440"]])
    one = functools.partial(_log_mel_one, n_mels=80, window=jnp.asarray(_hann_window()))
    vmapped = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(batch)))
    np.testing.assert_allclose(vmapped, np.asarray(log_mel_jax(jnp.asarray(batch), n_mels=80)), atol=1e-6, rtol=0)


@pytest.mark.parity
def test_window_rounds_like_torch_hann_window():
    torch = require("torch", "the parity oracle")
    from qwen_audio_jax.audio.features import _hann_window

    ref = torch.hann_window(400).numpy()
    assert np.abs(_hann_window() - ref).max() <= 6e-8  # at most 1 ulp, in a handful of entries
    assert (_hann_window() != ref).sum() <= 16
