"""Every user-visible choice has one home (qwen_audio_jax/choices.py): the command line's `choices=` and
`default=`, the validators and the code read it, and the home imports neither jax nor the rest of the package."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import subprocess
import sys

import pytest

from qwen_audio_jax import choices as C
from qwen_audio_jax.cli.main import build_parser
from tests._paths import REPO


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _flag(command: str, flag: str) -> argparse.Action:
    [action] = [a for a in _subparsers()[command]._actions if flag in a.option_strings]
    return action


def test_home_is_jax_free_and_imports_nothing_of_the_package():
    code = (
        "import sys, qwen_audio_jax.choices; "
        "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib', 'flax', 'numpy'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    tree = ast.parse((REPO / "qwen_audio_jax" / "choices.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("qwen_audio_jax") and not node.level, ast.unparse(node)
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("qwen_audio_jax") for a in node.names), ast.unparse(node)


# (command, flag, the home's choices or None, the home's default)
CHOICE_FLAGS = [
    *[(cmd, "--attention", C.ATTENTION_IMPLEMENTATIONS, C.DEFAULT_ATTENTION) for cmd in ("generate", "score", "eval")],
    *[(cmd, "--dtype", C.DTYPES, None) for cmd in ("generate", "score", "eval", "train", "sft", "dpo")],
    *[(cmd, "--quantize", C.QUANTIZE_MODES, C.DEFAULT_QUANTIZE) for cmd in ("generate", "score", "eval", "plan")],
    *[(cmd, "--kv-cache-dtype", C.KV_CACHE_DTYPES, C.DEFAULT_KV_CACHE_DTYPE) for cmd in ("generate", "eval", "plan")],
    *[
        (cmd, "--long-audio", C.LONG_AUDIO_POLICIES, C.DEFAULT_LONG_AUDIO)
        for cmd in ("generate", "score", "eval", "demo")
    ],
    ("eval", "--task", C.EVAL_TASKS, None),
    ("eval", "--variant", C.VARIANTS, None),
    ("convert", "--dtype", C.CONVERT_DTYPES, C.DEFAULT_CONVERT_DTYPE),
    ("plan", "--remat", C.REMAT_POLICIES, C.DEFAULT_REMAT),
    ("plan", "--reference", ("none", *C.REFERENCE_MODES), "none"),
    ("plan", "--param-dtype", C.DTYPES, None),
    ("plan", "--compute-dtype", C.DTYPES, "bfloat16"),
    *[(cmd, "--batch-size", None, C.DEFAULT_BATCH_SIZE) for cmd in ("generate", "score", "eval", "demo")],
    *[(cmd, "--workers", None, C.default_workers()) for cmd in ("generate", "score")],
    *[("generate", f"--{k.replace('_', '-')}", None, v) for k, v in C.SAMPLING_DEFAULTS.items()],
]


@pytest.mark.parametrize("command,flag,allowed,default", CHOICE_FLAGS, ids=lambda v: str(v))
def test_flags_take_their_choices_and_defaults_from_the_home(command, flag, allowed, default):
    action = _flag(command, flag)
    if allowed is not None:
        assert tuple(action.choices) == tuple(allowed)
    assert action.default == default


@pytest.mark.parametrize("flag", [f"--{k.replace('_', '-')}" for k in C.SAMPLING_RANGES])
def test_sampling_flags_check_the_validators_range(flag):
    key = flag[2:].replace("-", "_")
    assert _flag("generate", flag).type.range is C.SAMPLING_RANGES[key]


@pytest.mark.parametrize(
    "command,flag",
    [("generate", "--batch-size"), ("generate", "--workers"), ("eval", "--batch-size"), ("score", "--workers")],
)
def test_help_shows_the_default(command, flag):
    action = _flag(command, flag)
    assert "%(default)s" in action.help, action.help
    shown = _subparsers()[command].format_help()
    assert f"(default: {action.default})" in " ".join(shown.split()) or f"{action.default} here" in shown


def test_code_and_validators_read_the_home():
    from qwen_audio_jax.config import MODEL_TYPES
    from qwen_audio_jax.eval.manifest import TASKS as MANIFEST_TASKS
    from qwen_audio_jax.eval.normalize import VARIANTS as EVAL_VARIANTS
    from qwen_audio_jax.generation.options import PER_REQUEST_KEYS, GenerationOptions, SamplingSettings
    from qwen_audio_jax.jobs.tasks import TASKS as TASK_PRESETS
    from qwen_audio_jax.model.remat import REMAT_POLICIES
    from qwen_audio_jax.training.run_config import ReferenceConfig, TrainLoopConfig

    assert MODEL_TYPES is C.VARIANTS and EVAL_VARIANTS is C.VARIANTS
    assert MANIFEST_TASKS is C.EVAL_TASKS and set(C.EVAL_TASKS) <= set(TASK_PRESETS)
    assert REMAT_POLICIES is C.REMAT_POLICIES
    assert PER_REQUEST_KEYS == tuple(C.SAMPLING_RANGES) == tuple(C.SAMPLING_DEFAULTS)
    options = GenerationOptions()
    assert {k: getattr(options, k) for k in PER_REQUEST_KEYS} == C.SAMPLING_DEFAULTS
    assert SamplingSettings()._asdict() == {k: C.SAMPLING_DEFAULTS[k] for k in SamplingSettings._fields}
    loop = TrainLoopConfig()
    assert (loop.batch_size, loop.remat, loop.compute_dtype) == (
        C.DEFAULT_BATCH_SIZE,
        C.DEFAULT_REMAT,
        C.DEFAULT_TRAIN_COMPUTE_DTYPE,
    )
    assert ReferenceConfig().mode == C.DEFAULT_REFERENCE_MODE


def test_model_code_reads_the_home():
    from qwen_audio_jax.api import load
    from qwen_audio_jax.generation.engine import EngineOptions
    from qwen_audio_jax.model.attention import IMPLEMENTATIONS

    assert IMPLEMENTATIONS is C.ATTENTION_IMPLEMENTATIONS
    engine = EngineOptions()
    assert (engine.batch_size, engine.kv_cache_dtype) == (C.DEFAULT_BATCH_SIZE, C.DEFAULT_KV_CACHE_DTYPE)
    defaults = {f.name: f.default for f in dataclasses.fields(EngineOptions)}
    assert defaults["batch_size"] == C.DEFAULT_BATCH_SIZE
    import inspect

    sig = inspect.signature(load).parameters
    assert (sig["long_audio"].default, sig["attention"].default, sig["quantize"].default) == (
        C.DEFAULT_LONG_AUDIO,
        C.DEFAULT_ATTENTION,
        C.DEFAULT_QUANTIZE,
    )


def test_ranges_are_the_documented_ones():
    assert 1 in C.POSITIVE_INT and 0 not in C.POSITIVE_INT and C.INT32_MAX + 1 not in C.POSITIVE_INT
    assert 1.0 in C.PROBABILITY and 0.0 not in C.PROBABILITY
    assert 2**32 - 1 in C.SEED and 2**32 not in C.SEED
    assert C.FLOAT32_TINY in C.POSITIVE_FLOAT and C.FLOAT32_TINY / 2 not in C.POSITIVE_FLOAT
