"""Whisper log-mel features (docs/reference.md §2): a numpy reference and a jitted, batched JAX version.

Both reproduce `transformers.WhisperFeatureExtractor(feature_size=n_mels)(wav, sampling_rate=16000,
padding="max_length", return_attention_mask=True)`: 128 bins for Qwen2-Audio, 80 for Qwen-Audio v1. Per clip:

  truncate/zero-pad to 30 s (480000) -> reflect-pad 200 each side (torch.stft center=True) -> periodic Hann 400,
  hop 160 -> |rfft|^2 (201 bins) -> Slaney mel filters -> clamp 1e-10 -> log10 -> drop the last of the 3001
  frames -> floor at (per-example max - 8) -> (x + 4) / 4                                       => (n_mels, 3000)

Shapes: `M` mel bins, `A` = 3000 audio frames, `B` batch, `N` = 480000 samples.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.audio.constants import HOP, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from qwen_audio_jax.errors import ConfigError

_PERIOD = math.lcm(HOP, N_FFT)  # 800: frame starts repeat their position in an 800-sample row every 5 frames
_PHASES = _PERIOD // HOP  # 5 phases: frame 5k + j starts at 800k + 160j (see _frames)

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP",
    "N_FRAMES",
    "N_SAMPLES",
    "mel_filter_bank",
    "mel_length",
    "frame_mask",
    "log_mel_numpy",
    "log_mel_jax",
    "pad_batch",
]


# ----------------------------------------------------------------------------------------------- filter bank
def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (3 f / 200) below 1 kHz, logarithmic above (27 / ln 6.4 mels per e-fold)."""
    f = np.asarray(f, np.float64)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-300) / 1000.0) * (27.0 / np.log(6.4)), 3.0 * f / 200.0)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), 200.0 * m / 3.0)


@functools.cache
def _mel_filter_bank_f64(n_mels: int, sampling_rate: int, n_fft: int) -> np.ndarray:
    n_bins = n_fft // 2 + 1
    fmax = sampling_rate / 2.0  # Whisper passes max_frequency=8000.0, which is sr/2 at 16 kHz.
    edges_hz = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(fmax), n_mels + 2))
    fft_hz = np.linspace(0.0, sampling_rate // 2, n_bins)
    slopes = edges_hz[None, :] - fft_hz[:, None]  # (bins, n_mels + 2)
    widths = np.diff(edges_hz)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    # Slaney normalisation: each triangle has unit area in Hz (2 / band width), so wide high bands are not louder.
    fb *= 2.0 / (edges_hz[2 : n_mels + 2] - edges_hz[:n_mels])[None, :]
    fb.setflags(write=False)
    return fb


def mel_filter_bank(n_mels: int, sampling_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel filters (= librosa.filters.mel defaults, = Whisper's).

    Returns:
      (n_fft // 2 + 1, n_mels) float32, i.e. (201, M) for Whisper: `power_AF @ filters` gives mel power.
    """
    return _mel_filter_bank_f64(int(n_mels), int(sampling_rate), int(n_fft)).astype(np.float32)


@functools.cache
def _hann_window() -> np.ndarray:
    """(400,) float32 periodic Hann, rounded the way the reference's torch.hann_window(400) rounds it.

    torch computes it in float32: phase = float32(n) * float32(2 pi / 400), then 0.5 - 0.5 cos(phase). np.hanning
    (exact, then rounded) differs from that in 320 of 400 entries by a few ulps, and that alone moved features by up
    to 5e-5 against the torch path on tonal clips (worst case 1.1e-4 -> 7e-5 with this window). cos is taken in
    float64 on the float32 phase; torch's own float32 cos still differs in 12 entries by 1 ulp.
    """
    phase = np.arange(N_FFT + 1, dtype=np.float32) * np.float32(2.0 * np.pi / N_FFT)
    cos = np.cos(phase.astype(np.float64)).astype(np.float32)
    window = (cos * np.float32(-0.5) + np.float32(0.5))[:N_FFT]  # periodic: drop the 401st point
    window.setflags(write=False)
    return window


# ----------------------------------------------------------------------------------------------- lengths and masks
def mel_length(num_samples: int, rule: str = "ceil") -> int:
    """Number of valid mel frames for a clip of `num_samples` samples at 16 kHz (clipped at 30 s).

    "ceil" is Qwen2-Audio / HF (`feature_attention_mask.sum()` = ceil(L / 160)); "floor" is Qwen-Audio v1's
    `mel_len = L // 160` (docs/reference.md §3.2). They differ by one frame unless L is a multiple of 160.
    """
    n = min(int(num_samples), N_SAMPLES)
    if rule == "ceil":
        return -(-n // HOP)
    if rule == "floor":
        return n // HOP
    raise ConfigError(f"unknown mel length rule {rule!r}; use 'ceil' (Qwen2-Audio) or 'floor' (Qwen-Audio v1).")


def frame_mask(num_samples: int) -> np.ndarray:
    """The extractor's `attention_mask` for one clip: (3000,) bool, True on the ceil(min(L, 480000) / 160) first frames.

    The reference takes every 160th entry of the sample mask, so frame t is valid iff sample 160 t is real.
    """
    return np.arange(N_FRAMES) * HOP < min(int(num_samples), N_SAMPLES)


# ----------------------------------------------------------------------------------------------- numpy reference
def log_mel_numpy(wav: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """Whisper log-mel of one clip, in numpy (float64 STFT, the most exact of the three implementations).

    Args:
      wav: (L,) waveform at 16 kHz; anything past 30 s is ignored (the reference's truncation=True).
    Returns:
      (n_mels, 3000) float32.
    """
    w = np.asarray(wav, np.float32).reshape(-1)[:N_SAMPLES]  # the extractor casts to float32 before padding
    # Frames whose 400-sample window lies wholly in the zero padding are exactly log10(1e-10) = -10 before the
    # floor, so only the first `active` frames are computed (a 2 s clip: 214 of 3000, ~12x less work); the rest
    # are filled in. Near 30 s the right reflect padding reads the clip again, so everything is computed.
    active = -(-(w.shape[0] + N_FFT // 2) // HOP) + 1
    if active * HOP + N_FFT >= N_SAMPLES:
        active = N_FRAMES
    x = np.zeros(N_SAMPLES if active == N_FRAMES else active * HOP + N_FFT // 2, np.float32)
    x[: w.shape[0]] = w
    # float64 STFT: it agrees with the extractor's numpy path to ~1e-7 and with its (default) float32 torch path to
    # <= ~5e-5, which is the torch path's own rounding; a float32 STFT here is no closer to torch (the two round
    # differently), only further from the exact value.
    right = N_FFT // 2 if active == N_FRAMES else 0  # a short clip's right neighbours are the zero padding itself
    xp = np.pad(x.astype(np.float64), (N_FFT // 2, right), mode="reflect")  # torch.stft(center=True, "reflect")
    window = _hann_window().astype(np.float64)  # periodic Hann, with torch.hann_window's float32 rounding
    # Only the first 3000 of the 3001 centred frames: Whisper drops the last one (centred on sample 480000, half in
    # the reflect padding) so 30 s gives exactly 3000 10-ms frames, and it does so BEFORE the max, so that frame
    # never influences the floor either.
    frames = np.lib.stride_tricks.sliding_window_view(xp, N_FFT)[::HOP][: min(active, N_FRAMES)]
    spec = np.fft.rfft(frames * window, axis=-1)
    power = spec.real**2 + spec.imag**2  # (active, 201)
    mel = power @ _mel_filter_bank_f64(int(n_mels), SAMPLE_RATE, N_FFT)  # (active, M)
    logmel = np.full((int(n_mels), N_FRAMES), -10.0)  # (M, 3000): log10 of the 1e-10 clamp on silent frames
    logmel[:, : mel.shape[0]] = np.log10(np.maximum(mel, 1e-10)).T
    # Floor at max - 8 over the whole padded 30 s of this one clip (padding frames included), as the reference.
    logmel = np.maximum(logmel, logmel.max() - 8.0)
    return ((logmel + 4.0) / 4.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------- JAX
def pad_batch(wavs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (with zeros) or truncate each (L_i,) waveform to 30 s.

    Returns:
      wavs_BN: (B, 480000) float32, zeros past each clip's end (the reference's padding="max_length").
      lengths_B: (B,) int32, min(L_i, 480000); `frame_mask(lengths_B[i])` is clip i's feature mask.
    """
    out = np.zeros((len(wavs), N_SAMPLES), np.float32)
    lengths = np.zeros((len(wavs),), np.int32)
    for i, w in enumerate(wavs):
        w = np.asarray(w, np.float32).reshape(-1)[:N_SAMPLES]
        out[i, : w.shape[0]] = w
        lengths[i] = w.shape[0]
    return out, lengths


def _frames(x_N: jax.Array) -> jax.Array:
    """Centred STFT frames of one padded clip: (480000,) -> (3000, 400); frame i = padded x[160 i : 160 i + 400].

    Frames 5k + j (phase j < 5) start at 800k + 160j, so each phase is the first 400 samples of consecutive
    800-sample rows: a reshape plus a contiguous slice. Interleaving the 5 phases (stack on axis 1) is an affine
    copy XLA vectorises; gathering the 3000 overlapping windows directly was ~4x slower on CPU.
    """
    half = N_FFT // 2
    rows = N_FRAMES // _PHASES  # 600
    tail = HOP * (_PHASES - 1) + _PERIOD * rows - (N_SAMPLES + N_FFT)  # 240: the last phase's last row overruns
    # Reflect pad (edge sample not repeated, like np.pad/torch "reflect"), plus zeros so every phase has 600 rows.
    xp = jnp.concatenate([x_N[1 : half + 1][::-1], x_N, x_N[-half - 1 : -1][::-1], jnp.zeros((tail,), x_N.dtype)])
    phases = [xp[HOP * j : HOP * j + _PERIOD * rows].reshape(rows, _PERIOD)[:, :N_FFT] for j in range(_PHASES)]
    return jnp.stack(phases, axis=1).reshape(N_FRAMES, N_FFT)  # [k, j] -> frame 5k + j


@functools.cache
def _mel_bands(n_mels: int, groups: int = 8) -> tuple[tuple[int, int, np.ndarray], ...]:
    """The filter bank cut into `groups` blocks of consecutive mels, each with the contiguous bin range it touches.

    Returns ((bin_start, bin_stop, filters (bin_stop - bin_start, mels_in_group) float32), ...). A triangle spans
    only a few of the 201 bins, so 8 blocks do ~1/8 of the dense matmul's work (~15% off the whole CPU time), and
    the skipped entries are exact zeros, so the result equals the dense product.
    """
    fb = mel_filter_bank(n_mels)
    blocks = []
    for cols in np.array_split(np.arange(n_mels), min(groups, n_mels)):
        rows = np.flatnonzero((fb[:, cols] != 0).any(axis=1))
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 1)
        blocks.append((lo, hi, fb[lo:hi, cols[0] : cols[-1] + 1]))
    return tuple(blocks)


def _log_mel_one(x_N: jax.Array, n_mels: int, window: jax.Array) -> jax.Array:
    """(480000,) float32 -> (M, 3000) float32 log-mel of one padded clip."""
    spec = jnp.fft.rfft(_frames(x_N) * window, axis=-1)  # (3000, 201) complex64
    power_AF = spec.real**2 + spec.imag**2
    # (F, m) x (A, F) -> (m, A) per band, so the result lands in output layout without a transpose pass.
    # HIGHEST: on TPU/GPU the default matmul precision is bf16-ish, which would cost ~1e-2 in the log domain.
    contract = (((0,), (1,)), ((), ()))
    highest = jax.lax.Precision.HIGHEST
    bands = _mel_bands(n_mels)
    mel_MA = jnp.concatenate(
        [jax.lax.dot_general(jnp.asarray(w), power_AF[:, lo:up], contract, precision=highest) for lo, up, w in bands]
    )
    logmel = jnp.log10(jnp.maximum(mel_MA, 1e-10))
    logmel = jnp.maximum(logmel, jnp.max(logmel) - 8.0)  # per-example floor over the whole padded 30 s
    return (logmel + 4.0) / 4.0


@functools.partial(jax.jit, static_argnames=("n_mels",))
def log_mel_jax(wavs_BN: jax.Array, n_mels: int = 128) -> jax.Array:
    """Batched Whisper log-mel: the reference algorithm step for step, in float32.

    Args:
      wavs_BN: (B, 480000) float32, already padded/truncated to 30 s with zeros (see `pad_batch`).
      n_mels: 128 (Qwen2-Audio) or 80 (Qwen-Audio v1); static, so each (B, n_mels) compiles once.
    Returns:
      mel_BMA: (B, n_mels, 3000) float32. Max abs diff to WhisperFeatureExtractor (torch path), measured: <= 3.3e-5
      on the real fixture clips, <= 8.2e-5 on 320 strongly tonal synthetic clips (sine + weak noise). That residue is
      two float32 FFTs rounding differently on low-energy bins: the torch path itself sits up to 7.7e-5 from the
      float64 `log_mel_numpy` on those clips.
    """
    if wavs_BN.ndim != 2 or wavs_BN.shape[1] != N_SAMPLES:
        raise ValueError(f"log_mel_jax expects (B, {N_SAMPLES}) padded waveforms (use pad_batch); got {wavs_BN.shape}.")
    window = jnp.asarray(_hann_window())
    one = functools.partial(_log_mel_one, n_mels=n_mels, window=window)
    x = wavs_BN.astype(jnp.float32)
    if jax.default_backend() == "cpu":
        # One clip per loop step keeps its ~5 MB of frames/spectrum in cache; a batched (vmapped) version is ~2x
        # slower on CPU because every intermediate then streams through memory.
        return jax.lax.map(one, x)
    return jax.vmap(one)(x)  # accelerators: one wide batched program
