#!/usr/bin/env python3
"""Synthetic, seeded audio corpus (and its tokenizer) for the bundled demo model.

    python scripts/make_demo_data.py OUT_DIR [--seed 0] [--scale 1.0] [--workers 2]

Clips (16 kHz mono FLAC, all under 2.5 s so they encode in the smallest 256-frame bucket):

  * speech, spoken by `espeak-ng` (several voices x variants, random speed / pitch / word gap), resampled from
    espeak's 22,050 Hz to 16 kHz: digit sequences ("three one four") and short word sequences ("open the red box");
  * sounds synthesised with numpy: tones at named notes ("A4"), chirps sweeping up or down, noise bursts, and
    1-5 beeps;
  * augmentation: a background noise type (clean / white / pink / hum) at a random SNR, random gain, and a
    synthetic room reverberation (exponentially decaying noise impulse response) on about half of the clips.

Splits. Every clip has a "source" (a speaker: voice + variant; for sounds: a timbre, i.e. the waveform or the
noise colour of a burst) and a background noise type. The (source, noise) grid is cut into cells; a quarter of
the cells (one noise type per source, one source in four per noise type) belong to the held-out split only, so
no held-out clip's voice/noise combination ever occurs in training, while every voice and every noise type does.

Files written to OUT_DIR (audio paths in the JSONL files are relative to OUT_DIR):

  clips/{train,heldout}/*.flac
  manifest_{train,heldout}.jsonl   one line per clip: id, path, kind, label fields, source, noise, duration
  sft_train.jsonl                  SFT examples: chat {"messages": [user, assistant]} and base-model
                                   {"prompt", "audio", "completion"} records (2 prompts per clip)
  sft_heldout.jsonl                the same for the held-out clips
  dpo_train.jsonl                  preference pairs {"id", "messages" | "prompt"+"audio", "chosen", "rejected"}
                                   whose rejected answer is a plausible mistake (a wrong digit, count, note,
                                   chirp direction...)
  heldout_requests.jsonl           `qwen-audio-jax generate` requests over the held-out clips
  heldout_references.jsonl         {"id", "expected", "kind", "metric"} for each request (metric: wer | accuracy)
  tokenizer/                       the model's byte-level BPE (tokenizer.json, tokenizer_config.json,
                                   chat_template.json), trained on the corpus text
  corpus_info.json                 counts, durations, the split cells, the generation time
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SR = 16000
MAX_SECONDS = 2.5  # 250 mel frames: the 256-frame encoder bucket (needs L + 2 <= 256)

# ---------------------------------------------------------------------------------------------------------------
# Prompts (the reference styles)
# ---------------------------------------------------------------------------------------------------------------

AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"
ASR_PROMPT = AUDIO + "Detect the language and recognize the speech: <|en|>"
CAPTION_PROMPT = AUDIO + "Generate the caption in English:"
ASR_QUESTIONS = [
    "Transcribe the speech in this audio. Output only the transcript.",  # the `asr` task preset
    "What does the speaker say?",
    "Please transcribe this recording.",
]
SOUND_QUESTIONS = [
    "What sound is this?",
    "What do you hear in this audio?",
    "Describe this audio in one sentence.",
]  # the last one is the `caption` task preset
NOTE_QUESTION = "Which musical note is this tone?"
DIRECTION_QUESTION = "Is the chirp going up or down?"
COUNT_QUESTION = "How many beeps are there?"

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary and sources
# ---------------------------------------------------------------------------------------------------------------

DIGIT_LENGTHS = [0.1, 0.15, 0.25, 0.25, 0.25]  # P(1 digit), ..., P(5 digits)
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLORS = ["red", "green", "blue", "yellow", "black", "white"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow"]
OBJECTS = ["ball", "box", "cup", "door", "car", "book"]
VERBS = ["open", "close", "find", "take", "move", "push"]
COUNT_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four", 5: "Five"}
NOTES = {"C4": 261.63, "E4": 329.63, "G4": 392.00, "A4": 440.00, "C5": 523.25, "E5": 659.25, "G5": 783.99,
         "A5": 880.00}  # fmt: skip
NOTE_NAMES = list(NOTES)

# Speakers: espeak-ng voice + variant (16 identities; each gets its own pitch range too).
SPEAKERS = [("en-us", "m1"), ("en-us", "f1"), ("en-gb", "m3"), ("en-gb", "f2"), ("en-gb-scotland", "m2"),
            ("en-gb-scotland", "f3"), ("en-gb-x-rp", "m4"), ("en-gb-x-rp", "f4"), ("en-029", "m5"),
            ("en-029", "f5"), ("en-us-nyc", "m7"), ("en-us-nyc", "f1"), ("en-gb-x-gbclan", "m6"),
            ("en-gb-x-gbcwmd", "f2"), ("en-us", "klatt2"), ("en-gb", "m2")]  # fmt: skip
TIMBRES = ["sine", "triangle", "square", "saw"]  # tones, chirps, beeps; bursts use BURST_COLORS by the same slot
BURST_COLORS = ["white", "pink", "brown", "band"]
NOISES = ["clean", "white", "pink", "hum"]


def heldout_cell(source_index: int, noise_index: int) -> bool:
    """One noise type per source and one source in four per noise type are held out."""
    return (source_index + noise_index) % len(NOISES) == 0


def cells(n_sources: int, heldout: bool) -> list[tuple[int, int]]:
    return [(s, n) for s in range(n_sources) for n in range(len(NOISES)) if heldout_cell(s, n) == heldout]


# ---------------------------------------------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------------------------------------------


def _rng(seed: int, *key) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


def espeak(text: str, voice: str, variant: str, speed: int, pitch: int, gap: int, tmp: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    wav = tmp / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", f"{voice}+{variant}", "-s", str(speed), "-p", str(pitch), "-g", str(gap),
                    "-w", str(wav), text], check=True, capture_output=True)  # fmt: skip
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
    rng = _rng(spec["seed"], spec["id"])
    voice, variant = SPEAKERS[spec["source"]]
    base_pitch = 30 + 8 * (spec["source"] % 4)
    text = speech_text(spec["kind"], rng)
    for attempt in range(6):
        speed = int(rng.integers(140, 200)) + 20 * attempt
        x = espeak(text, voice, variant, speed, int(np.clip(base_pitch + rng.integers(-12, 13), 0, 99)),
                   int(rng.integers(0, 4)), tmp)  # fmt: skip
        if len(x) <= (MAX_SECONDS - 0.45) * SR:
            break
    else:
        x = x[: int((MAX_SECONDS - 0.45) * SR)]
    y = finish(x, NOISES[spec["noise"]], rng, with_reverb=rng.random() < 0.5)
    return y, {"text": text, "voice": f"{voice}+{variant}", "speed": speed}


def make_sound(spec: dict) -> tuple[np.ndarray, dict]:
    rng = _rng(spec["seed"], spec["id"])
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


# ---------------------------------------------------------------------------------------------------------------
# Questions, answers, mistakes
# ---------------------------------------------------------------------------------------------------------------


def sound_answer(clip: dict) -> str:
    kind = clip["kind"]
    if kind in ("digits", "words"):
        return f'A person saying "{clip["text"]}".'
    if kind == "tone":
        return f"A steady tone at the note {clip['note']}."
    if kind == "chirp":
        return f"A chirp sweeping {clip['direction']}."
    if kind == "noise":
        return "A short burst of noise."
    return "A single beep." if clip["count"] == 1 else f"{COUNT_WORDS[clip['count']]} beeps."


def specific_question(clip: dict) -> tuple[str, str] | None:
    kind = clip["kind"]
    if kind == "tone":
        return NOTE_QUESTION, f"{clip['note']}."
    if kind == "chirp":
        return DIRECTION_QUESTION, f"{clip['direction'].capitalize()}."
    if kind == "beeps":
        return COUNT_QUESTION, f"{COUNT_WORDS[clip['count']]}."
    return None


def chat(path: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "audio": path}, {"type": "text", "text": question}]}]


def prompt_options(clip: dict) -> list[tuple[str, dict, str]]:
    """(name, request, answer) for every prompt this clip can be asked with."""
    p = clip["path"]
    if clip["kind"] in ("digits", "words"):
        opts = [("asr-base", {"prompt": ASR_PROMPT, "audio": [p]}, clip["text"])]
        opts += [(f"asr-chat{i}", {"messages": chat(p, q)}, clip["text"]) for i, q in enumerate(ASR_QUESTIONS)]
        opts += [("what-chat", {"messages": chat(p, SOUND_QUESTIONS[0])}, sound_answer(clip))]
        return opts
    opts = [("caption-base", {"prompt": CAPTION_PROMPT, "audio": [p]}, sound_answer(clip))]
    opts += [(f"what-chat{i}", {"messages": chat(p, q)}, sound_answer(clip)) for i, q in enumerate(SOUND_QUESTIONS)]
    spec = specific_question(clip)
    if spec:
        opts.append(("specific-chat", {"messages": chat(p, spec[0])}, spec[1]))
    return opts


def pick_prompts(clip: dict, rng: np.random.Generator, k: int) -> list[tuple[str, dict, str]]:
    opts = prompt_options(clip)
    if clip["kind"] in ("digits", "words"):  # mostly transcription; the base ASR prompt and the preset most often
        weights = np.array([3.0, 2.0, 1.0, 1.0, 1.0])
    else:
        weights = np.array([1.5, 2.0, 1.0, 1.0] + ([1.5] if len(opts) == 5 else []))
    idx = rng.choice(len(opts), size=k, replace=False, p=weights / weights.sum())
    return [opts[i] for i in sorted(idx)]


def mistake(clip: dict, answer: str, rng: np.random.Generator) -> str:
    """A plausible wrong answer for `answer` (the chosen one)."""
    kind = clip["kind"]
    if kind in ("digits", "words"):
        words = clip["text"].split()
        pool = DIGITS if kind == "digits" else None
        i = int(rng.integers(len(words)))
        choice = rng.random()
        if kind == "digits" and choice < 0.2 and len(words) > 1:
            new = words[:i] + words[i + 1 :]  # a dropped digit
        elif kind == "digits" and choice < 0.35:
            new = words[:i] + [str(rng.choice(DIGITS))] + words[i:]  # an inserted digit
        else:
            if pool is None:
                pool = next((g for g in (COLORS, ANIMALS, OBJECTS, VERBS) if words[i] in g), None)
                if pool is None:  # "the" / "and": change another word
                    i = next(j for j, w in enumerate(words) if any(w in g for g in (COLORS, ANIMALS, OBJECTS, VERBS)))
                    pool = next(g for g in (COLORS, ANIMALS, OBJECTS, VERBS) if words[i] in g)
            new = list(words)
            new[i] = str(rng.choice([w for w in pool if w != words[i]]))  # a wrong digit / word
        wrong = " ".join(new)
        return answer.replace(clip["text"], wrong)
    if kind == "tone":
        j = NOTE_NAMES.index(clip["note"])
        other = NOTE_NAMES[j + 1 if j == 0 or (j < len(NOTE_NAMES) - 1 and rng.random() < 0.5) else j - 1]
        return answer.replace(clip["note"], other)  # a neighbouring note
    if kind == "chirp":
        other = "down" if clip["direction"] == "up" else "up"
        return answer.replace(clip["direction"], other).replace(clip["direction"].capitalize(), other.capitalize())
    if kind == "beeps":
        c = clip["count"]
        other = c + 1 if c == 1 or (c < 5 and rng.random() < 0.5) else c - 1  # one beep too many / too few
        if answer == sound_answer(clip):
            return sound_answer({**clip, "count": other})
        return f"{COUNT_WORDS[other]}."
    return "A single beep." if rng.random() < 0.5 else "A chirp sweeping up."  # noise burst mistaken


def sft_record(rid: str, request: dict, answer: str) -> dict:
    if "messages" in request:
        return {"id": rid, "messages": request["messages"] + [{"role": "assistant", "content": answer}]}
    return {"id": rid, **request, "completion": answer}


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
                  "<|en|>"]  # fmt: skip


def tokenizer_texts(records: list[dict]) -> list[str]:
    """Every piece of text the model sees or writes: rendered prompts (without audio) and answers."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from qwen_audio_jax.text.chat_template import render_chat

    texts = []
    for r in records:
        if "messages" in r:
            texts.append(render_chat(r["messages"], add_generation_prompt=False))
        else:
            texts += [r["prompt"], r.get("completion", "")]
        for key in ("chosen", "rejected"):
            if key in r:
                texts.append(r[key])
    # A little general text so that unseen words still tokenize into sensible pieces.
    texts += [
        "The quick brown fox jumps over the lazy dog. 0123456789 Hello, world! What is this? Yes. No.",
        "Audio 1: Audio 2: Audio 3: system user assistant You are a helpful assistant.",
        "Name three musical instruments. Which clip is louder? Transcribe, translate, describe, classify.",
    ]
    return texts


def build_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 640) -> Path:
    """A Qwen2-style byte-level BPE (same pre-tokenizer regex, NFC, byte-level decoder) with the Qwen2-Audio
    special tokens, written as tokenizer.json + tokenizer_config.json + chat_template.json."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from qwen_audio_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE
    from qwen_audio_jax.text.tokenizer import PAT_STR

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                        byte_fallback=False))  # fmt: skip
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    # Added tokens split the text before BPE runs (as at encode time), so train on the pieces between them.
    splitter = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))
    clean = [piece for t in texts for piece in splitter.split(t) if piece]
    tok.train_from_iterator(clean, trainer=trainer)
    from tokenizers import AddedToken

    base = tok.get_vocab_size(with_added_tokens=False)
    tok.add_special_tokens([AddedToken(s, lstrip=False, rstrip=False, normalized=False, single_word=False,
                                       special=True) for s in SPECIAL_TOKENS])  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tok.token_to_id(s)): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s in SPECIAL_TOKENS
    }
    assert [int(i) for i in added] == list(range(base, base + len(SPECIAL_TOKENS))), added
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
                                      "<|en|>"],
        "bos_token": None,
        "chat_template": DEFAULT_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 8192,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }  # fmt: skip
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # The processor-level template file (what Qwen2AudioProcessor and our Processor read).
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": DEFAULT_CHAT_TEMPLATE}, indent=2) + "\n")
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------

# Clips per split and kind at --scale 1.
COUNTS = {"train": {"digits": 4500, "words": 700, "tone": 800, "chirp": 500, "noise": 250, "beeps": 850},
          "heldout": {"digits": 200, "words": 80, "tone": 64, "chirp": 48, "noise": 32, "beeps": 64}}  # fmt: skip


def plan(seed: int, scale: float, out: Path, splits=tuple(COUNTS)) -> list[dict]:
    """Every clip to make; each (split, kind) has its own random stream, so one split alone is the same clips."""
    specs = []
    for split, counts in ((s, COUNTS[s]) for s in splits):
        for kind, n in counts.items():
            n = max(4, int(round(n * scale)))
            n_sources = len(SPEAKERS) if kind in ("digits", "words") else len(TIMBRES)
            grid = cells(n_sources, heldout=split == "heldout")
            rng = _rng(seed, "plan", split, kind)
            for i in range(n):
                s, z = grid[int(rng.integers(len(grid)))] if split == "train" else grid[i % len(grid)]
                cid = f"{split[0]}-{kind}-{i:05d}"
                specs.append(
                    {
                        "id": cid,
                        "kind": kind,
                        "split": split,
                        "source": s,
                        "noise": z,
                        "seed": seed,
                        "path": f"clips/{split}/{cid}.flac",
                        "out": str(out),
                    }
                )
    return specs


def write_heldout_requests(clips: list[dict], out: Path) -> list[dict]:
    """heldout_requests.jsonl (generate requests) + heldout_references.jsonl: transcription of every spoken clip
    with the base and the chat prompt, "What sound is this?" and the specific question for every sound."""
    requests, refs = [], []
    for clip in clips:
        opts = dict((n, (r, a)) for n, r, a in prompt_options(clip))
        if clip["kind"] in ("digits", "words"):
            chosen = ["asr-base", "asr-chat0"]
        else:
            chosen = ["what-chat0"] + (["specific-chat"] if "specific-chat" in opts else [])
        for name in chosen:
            request, answer = opts[name]
            rid = f"{clip['id']}-{name}"
            requests.append({"id": rid, **request})
            metric = "wer" if name.startswith("asr") else "accuracy"
            refs.append(
                {
                    "id": rid,
                    "expected": answer,
                    "kind": clip["kind"],
                    "prompt": name,
                    "metric": metric,
                    "source": clip["source"],
                    "noise": clip["noise"],
                }
            )
    with open(out / "heldout_requests.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in requests)
    with open(out / "heldout_references.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in refs)

    return requests


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output directory (replaced if it exists)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every clip count (e.g. 0.05 for a smoke test)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--prompts-per-clip", type=int, default=1)
    ap.add_argument("--dpo-fraction", type=float, default=0.065, help="train clips that also give a DPO pair")
    ap.add_argument("--vocab-size", type=int, default=640)
    ap.add_argument(
        "--only-heldout",
        action="store_true",
        help="only the held-out clips, requests and references (what tests/test_demo.py re-scores)",
    )
    args = ap.parse_args(argv)
    if not shutil.which("espeak-ng"):
        print("error: espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    t0 = time.time()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    splits = ("heldout",) if args.only_heldout else tuple(COUNTS)
    for split in splits:
        (out / "clips" / split).mkdir(parents=True)
    specs = plan(args.seed, args.scale, out, splits)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        clips = list(pool.map(render, specs, chunksize=32))
    by_split = {s: [c for c in clips if c["split"] == s] for s in splits}
    for split, rows in by_split.items():
        with open(out / f"manifest_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if args.only_heldout:
        write_heldout_requests(by_split["heldout"], out)
        print(json.dumps({"heldout_clips": len(clips), "generation_s": round(time.time() - t0, 1)}))
        return 0

    # SFT (train and held-out), DPO pairs (train), generate requests + references (held-out).
    rng = _rng(args.seed, "prompts")
    sft = {s: [] for s in COUNTS}
    for split, rows in by_split.items():
        for clip in rows:
            for name, request, answer in pick_prompts(clip, rng, args.prompts_per_clip):
                sft[split].append(sft_record(f"{clip['id']}-{name}", request, answer))
        order = rng.permutation(len(sft[split]))
        with open(out / f"sft_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(sft[split][i]) + "\n" for i in order)
    dpo = []
    for clip in by_split["train"]:
        if rng.random() >= args.dpo_fraction:
            continue
        name, request, answer = pick_prompts(clip, rng, 1)[0]
        dpo.append(
            {"id": f"{clip['id']}-{name}-dpo", **request, "chosen": answer, "rejected": mistake(clip, answer, rng)}
        )
    with open(out / "dpo_train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in dpo)
    requests = write_heldout_requests(by_split["heldout"], out)

    build_tokenizer(tokenizer_texts(sft["train"] + sft["heldout"] + dpo), out / "tokenizer", args.vocab_size)
    durations = np.array([c["duration"] for c in clips])
    info = {
        "seed": args.seed, "scale": args.scale,
        "clips": {s: {k: sum(c["kind"] == k for c in rows) for k in COUNTS[s]} for s, rows in by_split.items()},
        "sft_examples": {s: len(v) for s, v in sft.items()}, "dpo_pairs": len(dpo),
        "heldout_requests": len(requests),
        "duration_s": {"mean": round(float(durations.mean()), 3), "min": float(durations.min()),
                       "max": float(durations.max()), "total": round(float(durations.sum()), 1)},
        "heldout_cells": {"speech": [[f"{v}+{var}", NOISES[z]] for s, z in cells(len(SPEAKERS), True)
                                     for v, var in [SPEAKERS[s]]],
                          "sounds": [[TIMBRES[s], NOISES[z]] for s, z in cells(len(TIMBRES), True)]},
        "generation_s": round(time.time() - t0, 1),
    }  # fmt: skip
    (out / "corpus_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: info[k] for k in ("clips", "sft_examples", "dpo_pairs", "duration_s", "generation_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
