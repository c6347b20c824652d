"""Runs the recipe's stages as subprocesses, as a user would, and logs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    print(f"[train_demo_model {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "qwen-audio-jax"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("qwen-audio-jax")
    if not found:
        raise SystemExit("error: the `qwen-audio-jax` command is not on PATH; pip install -e . first")
    return [found]


def run(cmd: list[str], what: str, log_file: Path | None = None, cwd: Path = REPO) -> float:
    """Runs a stage; its output goes to the console and to log_file; returns the wall time."""
    log(f"{what}: {' '.join(cmd)}")
    t = time.time()
    with open(log_file, "w") if log_file else open(os.devnull, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
        for line in proc.stdout:
            lf.write(line)
            if not line.startswith(("sft:", "dpo:")) or "it/s" not in line and "s/it" not in line:
                sys.stdout.write("    " + line)
        rc = proc.wait()
    if rc:
        raise SystemExit(f"error: {what} failed (exit {rc}); see {log_file}")
    return time.time() - t
