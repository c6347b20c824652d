"""Special files and unbounded values (issue 24): nothing a path or a declared rate points at can hang a run. A
FIFO or a device is refused as an audio file (that request's error line), as an input and as an output (one
line, exit 2), and an inline array's sample rate is bounded before it reaches the resampler."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from qwen_audio_jax.audio.load import MAX_RATE, MIN_RATE, as_waveform, load_audio
from qwen_audio_jax.checkpoint.safe_write import check_result_file
from qwen_audio_jax.errors import AudioError, DataError, OutputError
from qwen_audio_jax.jsonl import open_jsonl
from tests._paths import REPO


def _within(seconds: float, fn):
    """fn()'s exception (or None), failing the test if it has not returned after `seconds` (a hang)."""
    box: list = []

    def run():
        try:
            fn()
            box.append(None)
        except Exception as e:  # noqa: BLE001 - handed back to the test
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"still running after {seconds} s: it hangs"
    return box[0]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.wav"
    os.mkfifo(path)
    yield path
    # Unblock a reader left behind by a regression (opening the write end without a reader fails at once).
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_is_not_an_audio_file(fifo):
    err = _within(20, lambda: load_audio(fifo))
    assert isinstance(err, AudioError) and "not a regular file" in str(err) and str(fifo) in str(err)


@pytest.mark.parametrize("path", ["fifo", "/dev/zero"])
def test_a_fifo_or_device_is_not_a_request_file(fifo, path):
    target = fifo if path == "fifo" else path
    err = _within(20, lambda: open_jsonl(target))
    assert isinstance(err, DataError) and "not a regular file" in str(err)


@pytest.mark.parametrize("path", ["fifo", "/dev/null", "/dev/zero"])
def test_a_fifo_or_device_is_not_a_results_file(fifo, path):
    target = fifo if path == "fifo" else path
    for flags in ({"resume": True, "overwrite": False}, {"resume": False, "overwrite": True}):
        err = _within(20, lambda: check_result_file(target, input_path=None, **flags))  # noqa: B023
        assert isinstance(err, OutputError) and "not a regular file" in str(err)


def test_generate_into_stdout_piped_to_cat_answers_at_once(tmp_path):
    """The probe of the issue: `--output /dev/stdout --overwrite | cat` hung reading its own pipe."""
    req = tmp_path / "req.jsonl"
    req.write_text('{"id": "a", "messages": [{"role": "user", "content": "Hi"}]}\n')
    cmd = [sys.executable, "-m", "qwen_audio_jax.cli.main", "generate", "--model", str(tmp_path / "m"), "--input"]
    cmd += [str(req), "--output", "/dev/stdout", "--overwrite", "--no-progress"]
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc = subprocess.run(
        cmd, stdout=cat.stdin, stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO, env={**os.environ}
    )
    cat.stdin.close()
    cat.wait(timeout=10)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "not a regular file" in lines[0], proc.stderr


@pytest.mark.parametrize(
    "rate, ok",
    [
        (9223372036854775807, False),  # the probe: hung inside the resampler
        (10**30, False),
        (MAX_RATE + 1, False),
        (MIN_RATE - 1, False),
        (1, False),
        (MAX_RATE, True),
        (MIN_RATE, True),
        (44100, True),
    ],
)
def test_sample_rates_are_bounded(rate, ok):
    x = np.zeros(2000, np.float32)
    result: list = []
    err = _within(30, lambda: result.append(as_waveform(x, rate, source="request-9")))
    if ok:
        assert err is None and len(result[0]) == int(np.ceil(2000 * 16000 / rate))
    else:
        assert isinstance(err, AudioError) and "out of range" in str(err) and "request-9" in str(err)
        assert f"[{MIN_RATE}, {MAX_RATE}]" in str(err)


@pytest.mark.parametrize("command", ["generate", "eval", "sft"])
def test_process_substitution_is_refused_as_a_pipe(tmp_path, command):
    """`--input <(cmd)` was refused as "a directory" (wrong); it is a pipe, read once, while inputs are read
    twice (checked, then read; resumed): refused for what it is, in one line, before anything is written."""
    line = '{"id": "a", "prompt": "Hi", "audio": "a.wav", "reference": "hi", "source": "s", "language": "en"}'
    pipe = f"<(printf '%s\\n' '{line}')"
    out = tmp_path / "out"
    cli = f"{sys.executable} -m qwen_audio_jax.cli.main"
    script = {
        "generate": f"{cli} generate --model {tmp_path / 'm'} --input {pipe} --output {out} --no-progress",
        "eval": f"{cli} eval --task asr --manifest {pipe} --predictions {pipe} --output {out} --no-progress",
        "sft": f"{cli} sft --no-progress model={tmp_path / 'm'} data.train={pipe} output_dir={out}",
    }[command]
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "/dev/fd/" in lines[0] and "not a regular file" in lines[0] and "directory" not in lines[0], lines[0]
    assert not out.exists() or command == "sft"  # training's output_dir is checked and made first
