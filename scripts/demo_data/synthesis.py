"""Clip synthesis: espeak-ng speech and numpy sounds, background noise, room reverberation, and `render`, which
makes one clip (in a worker process) and returns its manifest line."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .corpus import (
    ANIMALS,
    BURST_COLORS,
    COLORS,
    DIGIT_LENGTHS,
    DIGITS,
    MAX_SECONDS,
    NOISES,
    NOTE_NAMES,
    NOTES,
    OBJECTS,
    SPEAKERS,
    SR,
    TIMBRES,
    VERBS,
    seeded_rng,
)


def espeak(text: str, voice: str, variant: str, speed: int, pitch: int, gap: int, tmp: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    wav = tmp / "espeak.wav"
    options = ["-v", f"{voice}+{variant}", "-s", str(speed), "-p", str(pitch), "-g", str(gap), "-w", str(wav)]
    subprocess.run(["espeak-ng", *options, text], check=True, capture_output=True)
    x, sr = sf.read(wav, dtype="float32")
    if x.ndim > 1:
        x = x.mean(1)
    x = resample_poly(x, SR, sr) if sr != SR else x  # 22050 -> 16000 (320/441 after gcd)
    # espeak pads with silence; trim it (we add our own random margins).
    idx = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
    return x[idx[0] : idx[-1] + 1].astype(np.float32) if len(idx) else x.astype(np.float32)


def waveform(kind: str, phase: np.ndarray) -> np.ndarray:
    """A periodic waveform of `phase` (in cycles), band-limited by construction (few harmonics)."""
    p = 2 * np.pi * phase
    if kind == "sine":
        return np.sin(p)
    if kind == "triangle":
        return sum(((-1) ** k) * np.sin((2 * k + 1) * p) / (2 * k + 1) ** 2 for k in range(4)) * (8 / np.pi**2)
    if kind == "square":
        return sum(np.sin((2 * k + 1) * p) / (2 * k + 1) for k in range(4)) * (4 / np.pi) * 0.7
    if kind == "saw":
        return sum(((-1) ** (k + 1)) * np.sin(k * p) / k for k in range(1, 7)) * (2 / np.pi) * 0.7
    raise ValueError(kind)


def envelope(n: int, attack: float, release: float) -> np.ndarray:
    env = np.ones(n, np.float64)
    a, r = min(n // 3, max(1, int(attack * SR))), min(n // 3, max(1, int(release * SR)))
    env[:a] = np.linspace(0, 1, a)
    env[-r:] = np.minimum(env[-r:], np.linspace(1, 0, r))
    return env


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    if color == "pink":
        spec /= np.sqrt(f)
    elif color == "brown":
        spec /= f * (f > 40) + 40 * (f <= 40)
    elif color == "band":  # a band of noise around a random centre (a hiss / whoosh)
        c = rng.uniform(800, 4000)
        spec *= np.exp(-0.5 * (np.log(f / c) / 0.35) ** 2)
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def background(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "clean":
        return 0.05 * rng.standard_normal(n)  # a faint floor (SNR set below makes it ~inaudible)
    if kind in ("white", "pink"):
        return colored_noise(n, kind, rng)
    if kind == "hum":
        t = np.arange(n) / SR
        f0 = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) for k in range(1, 8))
        return x / (x.std() + 1e-12) + 0.1 * rng.standard_normal(n)
    raise ValueError(kind)


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import fftconvolve

    rt60 = rng.uniform(0.15, 0.6)
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * rng.uniform(0.15, 0.5)
    ir[: int(0.003 * SR)] = 0.0  # the direct path comes first, then the diffuse tail
    ir[0] = 1.0
    y = fftconvolve(x, ir)[: len(x) + int(0.15 * SR)]
    return y * (np.abs(x).max() / (np.abs(y).max() + 1e-12))


def finish(signal: np.ndarray, noise_kind: str, rng: np.random.Generator, with_reverb: bool) -> np.ndarray:
    """Margins, reverb, background noise at an SNR, random gain, clipped to MAX_SECONDS."""
    if with_reverb:
        signal = reverb(signal, rng)
    lead, tail = int(rng.uniform(0.03, 0.25) * SR), int(rng.uniform(0.03, 0.2) * SR)
    x = np.concatenate([np.zeros(lead), signal, np.zeros(tail)])[: int(MAX_SECONDS * SR)]
    noise = background(len(x), noise_kind, rng)
    snr = rng.uniform(35, 50) if noise_kind == "clean" else rng.uniform(10, 30)
    active = signal[np.abs(signal) > 0.05 * np.abs(signal).max()]
    p_sig = np.mean(active**2) if len(active) else np.mean(signal**2)
    x = x + noise * np.sqrt(p_sig / 10 ** (snr / 10) / np.mean(noise**2))
    x *= 10 ** (rng.uniform(-18, -2) / 20) / (np.abs(x).max() + 1e-12)
    return x.astype(np.float32)


def speech_text(kind: str, rng: np.random.Generator) -> str:
    if kind == "digits":
        # 1-5 digits: the short ones teach digit identity early, the long ones the alignment
        return " ".join(rng.choice(DIGITS, size=int(rng.choice(5, p=DIGIT_LENGTHS)) + 1))
    form = rng.integers(4)
    c, a, o, v = rng.choice(COLORS), rng.choice(ANIMALS), rng.choice(OBJECTS), rng.choice(VERBS)
    return [f"the {c} {a}", f"{v} the {o}", f"{v} the {c} {o}", f"the {a} and the {o}"][form]


def make_speech(spec: dict, tmp: Path) -> tuple[np.ndarray, dict]:
    rng = seeded_rng(spec["seed"], spec["id"])
    voice, variant = SPEAKERS[spec["source"]]
    base_pitch = 30 + 8 * (spec["source"] % 4)
    text = speech_text(spec["kind"], rng)
    for attempt in range(6):
        speed = int(rng.integers(140, 200)) + 20 * attempt
        pitch = int(np.clip(base_pitch + rng.integers(-12, 13), 0, 99))
        gap = int(rng.integers(0, 4))
        x = espeak(text, voice, variant, speed, pitch, gap, tmp)
        if len(x) <= (MAX_SECONDS - 0.45) * SR:
            break
    else:
        x = x[: int((MAX_SECONDS - 0.45) * SR)]
    y = finish(x, NOISES[spec["noise"]], rng, with_reverb=rng.random() < 0.5)
    return y, {"text": text, "voice": f"{voice}+{variant}", "speed": speed}


def make_sound(spec: dict) -> tuple[np.ndarray, dict]:
    rng = seeded_rng(spec["seed"], spec["id"])
    kind, timbre = spec["kind"], TIMBRES[spec["source"]]
    meta: dict = {"timbre": timbre}
    if kind == "tone":
        note = NOTE_NAMES[int(rng.integers(len(NOTES)))]
        f = NOTES[note] * 2 ** (rng.uniform(-0.15, 0.15) / 12)  # slightly out of tune
        n = int(rng.uniform(0.6, 1.9) * SR)
        x = waveform(timbre, f * np.arange(n) / SR) * envelope(n, rng.uniform(0.005, 0.08), rng.uniform(0.02, 0.2))
        meta["note"] = note
    elif kind == "chirp":
        direction = ["up", "down"][int(rng.integers(2))]
        lo, hi = rng.uniform(200, 700), rng.uniform(1200, 3500)
        f0, f1 = (lo, hi) if direction == "up" else (hi, lo)
        n = int(rng.uniform(0.5, 1.9) * SR)
        u = np.arange(n) / n
        freq = f0 * (f1 / f0) ** u if rng.random() < 0.5 else f0 + (f1 - f0) * u  # exponential or linear sweep
        x = waveform(timbre, np.cumsum(freq) / SR) * envelope(n, 0.01, 0.05)
        meta["direction"] = direction
    elif kind == "noise":
        n = int(rng.uniform(0.25, 1.2) * SR)
        color = BURST_COLORS[spec["source"]]
        x = colored_noise(n, color, rng) * 0.3 * envelope(n, rng.uniform(0.002, 0.05), rng.uniform(0.02, 0.3))
        meta["timbre"] = color
    elif kind == "beeps":
        count = int(rng.integers(1, 6))
        f = rng.uniform(600, 2000)
        dur, gap = rng.uniform(0.07, 0.18), rng.uniform(0.08, 0.25)
        nb, ng = int(dur * SR), int(gap * SR)
        beep = waveform(timbre, f * np.arange(nb) / SR) * envelope(nb, 0.005, 0.01)
        parts = []
        for i in range(count):
            parts += [beep * rng.uniform(0.8, 1.0)] + ([np.zeros(ng)] if i < count - 1 else [])
        x = np.concatenate(parts)
        meta["count"] = count
    else:
        raise ValueError(kind)
    y = finish(x * 0.5, NOISES[spec["noise"]], rng, with_reverb=rng.random() < 0.5)
    return y, meta


def render(spec: dict) -> dict:
    """Make one clip (runs in a worker) and return its manifest line."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        if spec["kind"] in ("digits", "words"):
            x, meta = make_speech(spec, Path(tmp))
        else:
            x, meta = make_sound(spec)
    path = Path(spec["out"]) / spec["path"]
    sf.write(path, x, SR, format="FLAC", subtype="PCM_16")
    return {
        "id": spec["id"],
        "path": spec["path"],
        "kind": spec["kind"],
        **meta,
        "source": spec["source"],
        "noise": NOISES[spec["noise"]],
        "split": spec["split"],
        "duration": round(len(x) / SR, 3),
        "rms_db": round(float(20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-9)), 1),
    }
