#!/usr/bin/env python
"""Script form of `qwen-audio-jax convert SRC DST [--dtype ...]` (the code lives in qwen_audio_jax.conversion)."""

import sys

from qwen_audio_jax.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
