"""Stage 6: bundling, i.e. the demo clips with their requests, and the summaries of the training runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys} if isinstance(d, dict) else d


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stage_summary(run_dir: Path, seconds: float) -> dict:
    rows = read_metrics(run_dir)
    if not rows:
        return {"seconds": round(seconds, 1)}
    last = rows[-1]
    first = rows[0]
    window = rows[-max(1, len(rows) // 10) :]
    mean = lambda k: round(float(np.mean([r[k] for r in window if k in r])), 4) if k in last else None  # noqa: E731
    return {
        "seconds": round(seconds, 1),
        "steps": last["step"],
        "first_loss": round(first["loss"], 4),
        "final_loss": round(last["loss"], 4),
        "final_loss_mean_last_10pct": mean("loss"),
        "final_reward_accuracy_mean_last_10pct": mean("rewards/accuracies"),
        "final_reward_margin_mean_last_10pct": mean("rewards/margins"),
    }


def copy_demo_clips(data: Path, dst: Path, results_path: Path, quick: bool = False) -> list[dict]:
    """A mixed handful of held-out clips (spread over noise types) + demo_requests.jsonl: each line a `generate`
    request with its clip path relative to the file, plus "expected" (the reference answer) and
    "trained_model_output" (what the bundled model answered in the held-out evaluation)."""
    from collections import defaultdict

    refs = [json.loads(line) for line in (data / "heldout_references.jsonl").read_text().splitlines()]
    reqs = {r["id"]: r for r in map(json.loads, (data / "heldout_requests.jsonl").read_text().splitlines())}
    got = (
        {r["id"]: r.get("text") for r in map(json.loads, results_path.read_text().splitlines())}
        if results_path.is_file()
        else {}
    )
    # kind -> (number of clips, the prompts to cycle through)
    plan = {
        "digits": (7, ["asr-base", "asr-chat0"]),
        "words": (3, ["asr-chat0", "asr-base"]),
        "tone": (3, ["what-chat0", "specific-chat"]),
        "chirp": (2, ["what-chat0", "specific-chat"]),
        "noise": (2, ["what-chat0"]),
        "beeps": (3, ["what-chat0", "specific-chat"]),
    }

    def audio_of(req: dict) -> str:
        return req["audio"][0] if "audio" in req else req["messages"][0]["content"][0]["audio"]

    picked = []
    for kind, (n, prompts) in plan.items():
        n = 1 if quick else n
        by_noise: dict[str, list[dict]] = defaultdict(list)
        for r in refs:
            if r["kind"] == kind:
                by_noise[r["noise"]].append(r)
        used: set[str] = set()
        k = 0
        for rnd in range(max((len(v) for v in by_noise.values()), default=0)):
            for noise in sorted(by_noise):
                if k >= n or rnd >= len(by_noise[noise]):
                    continue
                ref = by_noise[noise][rnd]
                clip = audio_of(reqs[ref["id"]])
                if clip in used or ref["prompt"] != prompts[k % len(prompts)]:
                    continue
                used.add(clip)
                picked.append(ref)
                k += 1
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    lines = []
    for ref in picked:
        req = json.loads(json.dumps(reqs[ref["id"]]))
        src = audio_of(req)
        name = Path(src).name
        shutil.copy2(data / src, dst / name)
        if "audio" in req:
            req["audio"] = [name]
        else:
            req["messages"][0]["content"][0]["audio"] = name
        lines.append(
            {
                **req,
                "expected": ref["expected"],
                "kind": ref["kind"],
                "noise": ref["noise"],
                "trained_model_output": got.get(ref["id"]),
            }
        )
    (dst / "demo_requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return lines
