"""The server's load benchmark (benchmarks/serve.py) in --smoke mode, so it never rots: a cold and a warm start of
the server on the bundled demo model, then its phases; every request answered, none lost, every text equal to the
request's text alone, and the server drained with exit status 0 both times. No timing is asserted."""

import json
import subprocess
import sys

import pytest

from tests._paths import REPO


@pytest.mark.slow
def test_serve_benchmark_smoke():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve.py"), "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and len(lines) == 1, (proc.stdout[-3000:], proc.stderr[-3000:])
    [result] = lines
    assert result["nothing_lost"] and result["same_text_as_alone"] and result["errors"] == 0
    for start in ("cold", "warm"):
        assert result["startup"][start]["exit_status"] == 0
        assert result["startup"][start]["programs"] > 0
    for phase in ("sequential", "concurrent"):
        figures = result[phase]
        assert figures["sent"] == figures["ok"] == figures["server_answered"] > 0, figures
        assert figures["text_differs"] == 0 and figures["generated_tokens"] > 0
    assert result["corpus"]["chat"] > 0 and result["corpus"]["transcription"] > 0
