"""The formatter and linter configured in pyproject.toml pass on the whole repository (CI runs this file)."""

import shutil
import subprocess
import sys

from tests._paths import REPO


def _ruff(*args):
    exe = shutil.which("ruff") or [sys.executable, "-m", "ruff"]
    cmd = [exe, *args] if isinstance(exe, str) else [*exe, *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def test_ruff_check():
    proc = _ruff("check", "--output-format=concise", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_format():
    proc = _ruff("format", "--check", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
