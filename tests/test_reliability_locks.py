"""Locks (issue 24): a destination another run is writing is refused with one line naming that process, and
nothing it holds is touched: a results file (`generate --resume` beside a running job), a training output_dir,
a convert destination, and the live temporary of another run. A lock never outlives its process (kill -9)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwen_audio_jax.checkpoint.locks import acquire, check_not_in_use, release, sidecar_lock
from qwen_audio_jax.checkpoint.safe_write import DIR_LOCK, atomic_directory, remove_stale_temps
from qwen_audio_jax.cli.main import main
from qwen_audio_jax.errors import OutputError
from qwen_audio_jax.jobs.results import ResultWriter
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._paths import REPO

# Holders: a second process that takes a lock the way a running job does, says so, and waits to be killed.
HOLD_LOCK = """
import sys, time
from qwen_audio_jax.checkpoint.locks import acquire
acquire(sys.argv[1], sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""
HOLD_RESULTS = """
import sys, time
from qwen_audio_jax.jobs.results import ResultWriter
w = ResultWriter(sys.argv[1], resume=True)
w.write({"id": "from-the-running-job", "text": "x", "error": None})
print("held", flush=True)
time.sleep(600)
"""
HOLD_TEMP = """
import sys, time
from pathlib import Path
from qwen_audio_jax.checkpoint.safe_write import atomic_directory
with atomic_directory(sys.argv[1], "model") as tmp:
    (tmp / "params.partial").write_bytes(b"x" * 100)
    print(tmp, flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def holder(script: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        proc.first_line = proc.stdout.readline().strip()
        assert proc.first_line, "the holder process did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- the lock itself ---------------------------------------------------------------------------------------------
def test_a_held_lock_names_its_process_and_dies_with_it(tmp_path):
    lock = tmp_path / ".x.lock"
    with holder(HOLD_LOCK, lock) as proc:
        with pytest.raises(OutputError, match=rf"in use by process {proc.pid}\b"):
            acquire(lock, "x")
        with pytest.raises(OutputError, match=rf"in use by process {proc.pid}\b"):
            check_not_in_use(lock, "x")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    acquire(lock, "x")  # the kernel dropped the dead holder's lock
    assert lock.read_text().strip() == str(os.getpid())
    release(lock)
    assert not lock.exists(), "the last release removes the lock file"
    check_not_in_use(lock, "x")  # a probe creates nothing
    assert not lock.exists()


def test_locks_are_reentrant_within_a_process(tmp_path):
    lock = tmp_path / ".y.lock"
    acquire(lock, "y")
    acquire(lock, "y")
    release(lock)
    assert lock.exists(), "still held once"
    release(lock)
    assert not lock.exists()


# ---- results files -----------------------------------------------------------------------------------------------
def test_results_writer_is_refused_while_another_process_writes(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps({"id": "a", "text": "t", "error": None}) + "\n")
    with holder(HOLD_RESULTS, out) as proc:
        before = out.read_bytes()
        for kwargs in ({"resume": True}, {"resume": False}):
            with pytest.raises(OutputError, match=rf"in use by process {proc.pid}"):
                ResultWriter(out, **kwargs)
            assert out.read_bytes() == before, "a refused writer touched the file"
    with ResultWriter(out, resume=True) as w:  # free again once the holder is gone
        assert w.done_ids == {"a", "from-the-running-job"}
    assert not sidecar_lock(out).exists()


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_generate_beside_a_running_job_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, capsys, flag):  # noqa: F811
    inp = tmp_path / "req.jsonl"
    inp.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    out = tmp_path / "results.jsonl"
    out.write_text("")
    with holder(HOLD_RESULTS, out) as proc:
        before = _digest(out)
        capsys.readouterr()
        status = main(
            [
                "generate",
                "--model",
                str(tiny_model_dir),
                "--input",
                str(inp),
                "--output",
                str(out),
                flag,
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err
        assert status == 2
        assert f"in use by process {proc.pid}" in _one_error_line(err)
        assert _digest(out) == before


# ---- directories -------------------------------------------------------------------------------------------------
def test_training_into_an_output_dir_in_use_is_refused(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    from tests._synthetic_prefs import write_preference_set

    data = write_preference_set(tmp_path / "d", 4, seed=5)
    out = tmp_path / "run"
    out.mkdir()
    with holder(HOLD_LOCK, out / DIR_LOCK) as proc:
        capsys.readouterr()
        status = main(
            [
                "dpo",
                "--config",
                str(REPO / "configs" / "dpo_tiny.yaml"),
                "--no-progress",
                f"model={tiny_model_dir}",
                f"data.train={data}",
                f"output_dir={out}",
            ]
        )
        err = capsys.readouterr().err
        assert status == 2 and f"in use by process {proc.pid}" in _one_error_line(err)
        assert [p.name for p in out.iterdir()] == [DIR_LOCK], "the refused run wrote into the directory"


def test_convert_into_a_destination_being_written_is_refused(tiny_hf_dir, tmp_path, capsys):  # noqa: F811
    dst = tmp_path / "m"
    with holder(HOLD_TEMP, dst) as proc:
        live = Path(proc.first_line)
        capsys.readouterr()
        status = main(["convert", str(tiny_hf_dir), str(dst), "--no-progress"])
        err = capsys.readouterr().err
        assert status == 2 and f"in use by process {proc.pid}" in _one_error_line(err)
        assert (live / "params.partial").exists(), "the live run's temporary was touched"


def test_a_live_temporary_is_never_taken_for_stale(tmp_path):
    """Even a writer that does not take the destination's lock (another tool version) cannot delete a live
    run's temporary: the temp itself is locked while it is written."""
    dst = tmp_path / "m"
    with holder(HOLD_TEMP, dst) as proc:
        live = Path(proc.first_line)
        assert remove_stale_temps(dst, warn=lambda m: None) == []
        assert (live / "params.partial").exists()
    # Once its writer is dead it is stale, and the next write removes it (and says so).
    said = []
    with atomic_directory(dst, "model", warn=said.append) as tmp:
        (tmp / "x").write_text("done")
    assert not live.exists() and said and str(live) in said[0]
    assert (dst / "x").read_text() == "done"


def test_a_killed_writer_leaves_a_marked_temporary_that_the_next_run_removes(tmp_path):
    dst = tmp_path / "m"
    with holder(HOLD_TEMP, dst) as proc:
        live = Path(proc.first_line)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert live.exists() and (live / ".written-by-qwen-audio-jax").exists()
    assert remove_stale_temps(dst, warn=lambda m: None) == [live]


def test_eval_into_a_directory_in_use_is_refused(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u0", "audio": "a.wav", "reference": "hi", "source": "s", "language": "en"}))
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "u0", "text": "hi", "error": None}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["eval", "--task", "asr", "--manifest", str(manifest), "--predictions", str(preds), "--output", str(out)]
    with holder(HOLD_LOCK, out / DIR_LOCK) as proc:
        capsys.readouterr()
        status = main(argv)
        assert status == 2 and f"in use by process {proc.pid}" in _one_error_line(capsys.readouterr().err)
        assert [p.name for p in out.iterdir()] == [DIR_LOCK]
    assert main(argv) == 0 and (out / "metrics.json").exists()
