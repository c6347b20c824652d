"""Where the bundled demo model and clips live, and how `demo_requests.jsonl` reads.

`assets/demo_model/` is a model dir in our format (written by scripts/train_demo_model.py, see its MODEL_CARD.md);
`assets/demo_clips/demo_requests.jsonl` has one `generate` request per held-out clip (audio paths relative to the
file) plus the demo's own keys: "expected" (the reference answer), "kind" (digits / words / tone / chirp / noise /
beeps), "noise" (the background type) and "trained_model_output" (what the model answered when it was trained).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from qwen_audio_jax.bundled import ASSETS

DEMO_MODEL = ASSETS / "demo_model"
DEMO_CLIPS = ASSETS / "demo_clips"
DEMO_REQUESTS = DEMO_CLIPS / "demo_requests.jsonl"
DEMO_KEYS = ("expected", "kind", "noise", "trained_model_output")  # the demo's keys; the rest is the request

__all__ = ["DEMO_MODEL", "DEMO_CLIPS", "DEMO_REQUESTS", "DemoItem", "load_demo_items"]


@dataclasses.dataclass(frozen=True)
class DemoItem:
    """One held-out clip and question: the `generate` request, its reference answer and what it is about."""

    request: dict  # a generate request (id, prompt + audio or messages); audio paths relative to DEMO_CLIPS
    expected: str
    kind: str
    noise: str
    trained_model_output: str | None

    @property
    def question(self) -> str:
        """The text the model is asked (the raw prompt's instruction, or the chat turn's text)."""
        if "prompt" in self.request:
            return self.request["prompt"].split("<|audio_eos|>")[-1]
        return " ".join(c["text"] for c in self.request["messages"][0]["content"] if c.get("type") == "text")

    @property
    def clip(self) -> str:
        if "audio" in self.request:
            return self.request["audio"][0]
        return next(c["audio"] for c in self.request["messages"][0]["content"] if c.get("type") == "audio")


def load_demo_items(clips_dir: Path = DEMO_CLIPS) -> list[DemoItem]:
    """The requests of `clips_dir`/demo_requests.jsonl, with their demo keys split off."""
    path = Path(clips_dir) / DEMO_REQUESTS.name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the bundled demo clips are missing; reinstall qwen-audio-jax (or run "
            "scripts/train_demo_model.py, which writes them)."
        )
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        request = {k: v for k, v in record.items() if k not in DEMO_KEYS}
        items.append(
            DemoItem(request, record["expected"], record["kind"], record["noise"], record.get("trained_model_output"))
        )
    return items
