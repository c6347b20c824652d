"""Signals at random moments (issue 24): a Ctrl-C during convert left an unmarked temporary (Orbax's writer threads
kept writing after the cleanup) that no later run removed, gigabytes for a 7B. Now a Ctrl-C waits for the current
write to finish, the cleanup removes the marker last, and whatever moment the signal lands, nothing is left but
a complete model or nothing at all."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qwen_audio_jax.checkpoint.safe_write import (
    atomic_directory,
    deferred_interrupt,
    is_ours,
    remove_stale_temps,
)
from tests._model_dirs import tiny_hf_dir  # noqa: F401
from tests._paths import REPO


@pytest.fixture
def default_sigint():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_waits_for_the_block_and_a_second_one_stops_at_once(default_sigint):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("the write finished")
    assert done == ["the write finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("not reached")
    assert done == ["the write finished"]


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job: Ctrl-C must not reach it
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_failed_write_that_is_still_written_into_keeps_its_marker(tmp_path):
    """A library thread writing into the temp after the failure: the temp is either gone or still marked (so the
    next run removes it), never an unmarked leftover."""
    dst = tmp_path / "m"
    stop = threading.Event()
    with pytest.raises(RuntimeError):
        with atomic_directory(dst, "model") as tmp:

            def keep_writing():
                i = 0
                while not stop.is_set():  # files inside the temp (it never recreates the temp itself)
                    try:
                        (tmp / "params.partial_save").mkdir(exist_ok=True)
                        (tmp / "params.partial_save" / f"chunk{i}").write_bytes(b"x" * 100)
                    except OSError:
                        pass  # removed under it by the cleanup
                    i += 1

            writer = threading.Thread(target=keep_writing, daemon=True)
            writer.start()
            time.sleep(0.05)
            raise RuntimeError("the write failed")
    stop.set()
    writer.join()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp-")]
    assert all(is_ours(p) for p in left), "an unmarked temporary was left"
    remove_stale_temps(dst, warn=lambda m: None)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")], "the next run removes what was left"


def test_ctrl_c_at_random_moments_during_convert_leaves_nothing_behind(tiny_hf_dir, tmp_path):  # noqa: F811
    rng = random.Random(24)
    for trial, delay in enumerate([0.0] + [rng.uniform(0.0, 1.5) for _ in range(3)]):
        parent = tmp_path / f"t{trial}"
        parent.mkdir()
        dst = parent / "m"
        cmd = [sys.executable, "-m", "qwen_audio_jax.cli.main", "convert", str(tiny_hf_dir), str(dst), "--no-progress"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(parent.glob(".m.tmp-*")):
            time.sleep(0.01)  # the write has started once its temporary exists
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 130), err
        assert "Traceback" not in err and "internal error" not in err, err
        # "interrupting: finishing the current write first ..." then "interrupted": no library noise
        assert all(line.startswith("interrupt") for line in err.splitlines() if line.strip()), err
        names = sorted(p.name for p in parent.iterdir())
        if proc.returncode == 130:
            assert names == [], f"after a Ctrl-C {delay:.2f} s into the write: {names}"
        else:  # the signal came after the model was complete
            assert names == ["m"] and (dst / "config.json").is_file() and is_ours(dst)
        assert Path(dst.parent).is_dir()
