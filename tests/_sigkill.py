"""SIGKILL a command mid-run: the resume tests' one way of interrupting a subprocess at a known point."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def kill_when(args: list[str], ready: Callable[[], bool], *, timeout_s: float = 600, **popen) -> None:
    """Starts `args`, polls `ready()` every 50 ms (until it holds, the process ends or `timeout_s` passes), then
    SIGKILLs the process and waits for it. `popen`: Popen's keywords (env, cwd...); stderr is discarded."""
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, **popen)
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
