"""Training metrics to `metrics.jsonl` (one line per logged step) and TensorBoard, under TRL's names."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsWriter:
    """Appends {"step", metric...} lines; on resume, lines past the restored step are dropped first, so the
    file always describes one consistent run."""

    def __init__(self, out_dir: Path, *, enabled: bool = True, resume_after: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_after and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if _step(line) is not None and _step(line) <= resume_after
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        except ImportError:  # TensorBoard output is optional
            self._tb = None

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps({"step": step, **{k: v for k, v in metrics.items() if k != "step"}}) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
