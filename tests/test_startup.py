"""A fast start: `--help` and usage errors answer without importing jax; a job's summary reports load, compile
and time to first result; a second run of the same job with a warm persistent cache compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._paths import REPO

PROBE = """
import sys, time
t = time.perf_counter()
from qwen_audio_jax.cli.main import main
code = main(sys.argv[1:])
print("JAX_IMPORTED" if "jax" in sys.modules else "NO_JAX", code, round(time.perf_counter() - t, 3))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["generate", "--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["plan", "--help"],
        ["generate", "--model", "m", "--input", "i", "--output", "o", "--batch-size", "0"],
        ["generate"],
        ["convert", "a"],
        ["nonsense"],
    ],
)
def test_help_and_usage_errors_do_not_import_jax(argv):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=60,
    )
    marker, code, _seconds = proc.stdout.strip().splitlines()[-1].split()
    assert marker == "NO_JAX", proc.stdout
    assert int(code) == (0 if "--help" in argv else 2)
    if code != "0":
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_warm_persistent_cache_compiles_nothing(tiny_model_dir, tmp_path):  # noqa: F811
    """Two fresh processes run the same job against one cache directory: the first compiles, the second only
    loads programs from the cache. The summary line carries load, compile, first-result and input-wait."""
    import soundfile as sf

    from tests._requests import synth_clip

    sf.write(tmp_path / "c.wav", synth_clip(1.2, 3), 16000)
    reqs = [
        {
            "id": f"r{i}",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", "audio": str(tmp_path / "c.wav")},
                        {"type": "text", "text": "x " * i},
                    ],
                }
            ],
        }
        for i in range(5)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reqs))
    cache = tmp_path / "xla"

    def run(out):
        argv = [
            sys.executable,
            "-m",
            "qwen_audio_jax.cli.main",
            "generate",
            "--model",
            str(tiny_model_dir),
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / out),
            "--max-new-tokens",
            "5",
            "--batch-size",
            "2",
            "--no-progress",
            "--compilation-cache",
            str(cache),
        ]
        proc = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"}
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stderr.strip().splitlines()[-1])

    cold, warm = run("a.jsonl"), run("b.jsonl")
    for summary in (cold, warm):
        for key in (
            "load_s",
            "compile_s",
            "compiled_programs",
            "first_result_s",
            "input_wait_fraction",
            "seconds",
            "requests",
            "tokens",
        ):
            assert key in summary, key
        assert summary["requests"] == 5 and summary["errors"] == 0 and 0 <= summary["input_wait_fraction"] <= 1
    assert cold["compiled_programs"] > 0
    assert warm["compiled_programs"] == 0, warm
    # The same results (their order follows which request finished first, which timing decides).
    lines = lambda name: sorted((tmp_path / name).read_text().splitlines())  # noqa: E731
    assert lines("a.jsonl") == lines("b.jsonl")
