"""The device suite (benchmarks/accelerator.py) in --smoke mode on the CPU, so it never rots: every section runs
and prints its JSON line, with no error, and the correctness checks hold on this backend."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_suite_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "accelerator.py"), "--smoke", "--skip", "demo_model"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    sections = {line["section"] for line in lines}
    assert {"env", "kernels", "correctness", "decode", "prefill", "encoder", "torch", "dpo_step", "done"} <= sections
    assert not [line for line in lines if "error" in line or "skipped" in line], lines
    fp32 = next(line for line in lines if line.get("run") == "tiny fp32: device vs CPU")
    assert fp32["identical"] == "3/3"
    hlo = next(line for line in lines if line.get("check") == "int8 decode HLO")
    assert hlo["full_precision_weight_copies"] == 0
    assert all(line["step_ms"] > 0 for line in lines if line["section"] == "decode")
