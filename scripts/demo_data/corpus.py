"""What the demo corpus is made of: sample rate, clip length, vocabulary, sources, and the held-out split cells."""

from __future__ import annotations

import zlib

import numpy as np

SR = 16000
MAX_SECONDS = 2.5  # 250 mel frames: the 256-frame encoder bucket (needs L + 2 <= 256)

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
NOTES = {"C4": 261.63, "E4": 329.63, "G4": 392.00, "A4": 440.00, "C5": 523.25, "E5": 659.25, "G5": 783.99, "A5": 880.00}
NOTE_NAMES = list(NOTES)

# Speakers: espeak-ng voice + variant (16 identities; each gets its own pitch range too).
SPEAKERS = [
    ("en-us", "m1"),
    ("en-us", "f1"),
    ("en-gb", "m3"),
    ("en-gb", "f2"),
    ("en-gb-scotland", "m2"),
    ("en-gb-scotland", "f3"),
    ("en-gb-x-rp", "m4"),
    ("en-gb-x-rp", "f4"),
    ("en-029", "m5"),
    ("en-029", "f5"),
    ("en-us-nyc", "m7"),
    ("en-us-nyc", "f1"),
    ("en-gb-x-gbclan", "m6"),
    ("en-gb-x-gbcwmd", "f2"),
    ("en-us", "klatt2"),
    ("en-gb", "m2"),
]
TIMBRES = ["sine", "triangle", "square", "saw"]  # tones, chirps, beeps; bursts use BURST_COLORS by the same slot
BURST_COLORS = ["white", "pink", "brown", "band"]
NOISES = ["clean", "white", "pink", "hum"]


def heldout_cell(source_index: int, noise_index: int) -> bool:
    """One noise type per source and one source in four per noise type are held out."""
    return (source_index + noise_index) % len(NOISES) == 0


def cells(n_sources: int, heldout: bool) -> list[tuple[int, int]]:
    return [(s, n) for s in range(n_sources) for n in range(len(NOISES)) if heldout_cell(s, n) == heldout]


def seeded_rng(seed: int, *key) -> np.random.Generator:
    """A random stream of its own for every key (a clip id, a split and kind...), whatever else is drawn."""
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])
