"""The sample training sets the README's `sft` / `dpo` examples run on, built from the bundled demo clips.

    assets/sample_data/sft.jsonl      one SFT record per demo request: the request plus its expected answer
    assets/sample_data/prefs.jsonl    one preference pair per demo request: chosen = the expected answer,
                                      rejected = the answer the model gave when it was trained, where that was
                                      wrong, else a plausible mistake (a changed digit or word, a neighbouring
                                      note, the other chirp direction, one beep fewer, noise named a beep)

Audio paths are relative to the data files (`../demo_clips/...`), as training data takes them. The files are a
few kilobytes: they show the data formats and let the commands run from a fresh clone, nothing more (the clips
are the demo's held-out ones). `build_sample_sets()` writes them again; a test checks the shipped files equal it.
"""

from __future__ import annotations

import json
from pathlib import Path

from qwen_audio_jax.bundled import ASSETS
from qwen_audio_jax.demo.bundle import DEMO_CLIPS, DemoItem, load_demo_items

__all__ = ["SAMPLE_DATA", "SAMPLE_SFT", "SAMPLE_PREFS", "sample_records", "build_sample_sets"]

SAMPLE_DATA = ASSETS / "sample_data"
SAMPLE_SFT, SAMPLE_PREFS = SAMPLE_DATA / "sft.jsonl", SAMPLE_DATA / "prefs.jsonl"
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_COUNTS = ("one", "two", "three", "four", "five")
_NOTES = "CDEFGAB"


def _mistake(item: DemoItem) -> str:
    """A plausible wrong answer to `item` (deterministic)."""
    if item.trained_model_output is not None and item.trained_model_output != item.expected:
        return item.trained_model_output
    expected, kind = item.expected, item.kind
    words = expected.split()
    if kind == "digits":
        return " ".join(words[:-1] + [_DIGITS[(_DIGITS.index(words[-1]) + 1) % 10]])
    if kind == "words":
        return " ".join(words[:-1] + ["dog" if words[-1] != "dog" else "cat"])
    if kind == "tone":
        note = next(w for w in words if len(w.rstrip(".")) == 2 and w[0] in _NOTES).rstrip(".")
        other = _NOTES[(_NOTES.index(note[0]) + 1) % 7] + note[1]
        return expected.replace(note, other)
    if kind == "chirp":
        a, b = ("up", "down") if "up" in expected.lower() else ("down", "up")
        return expected.replace(a, b).replace(a.capitalize(), b.capitalize())
    if kind == "beeps":
        count = words[0].lower()
        fewer = _COUNTS[_COUNTS.index(count) - 1] if count != "one" else "two"
        return expected.replace(words[0], fewer.capitalize() if words[0][0].isupper() else fewer)
    return "A single beep."  # a noise burst


def _relative(request: dict, prefix: str) -> dict:
    """The request with its clip paths made relative to the sample data dir."""
    out = dict(request)
    if "audio" in out:
        out["audio"] = [prefix + a for a in out["audio"]]
    if "messages" in out:
        out["messages"] = [
            {**m, "content": [{**c, "audio": prefix + c["audio"]} if "audio" in c else c for c in m["content"]]}
            for m in out["messages"]
        ]
    return out


def sample_records(clips_dir: Path = DEMO_CLIPS) -> tuple[list[dict], list[dict]]:
    """(SFT records, preference records) of the demo requests in `clips_dir`."""
    prefix = f"../{Path(clips_dir).name}/"
    sft, prefs = [], []
    for item in load_demo_items(clips_dir):
        request = _relative(item.request, prefix)
        if "messages" in request:
            turns = request["messages"] + [{"role": "assistant", "content": item.expected}]
            sft.append({"id": request["id"], "messages": turns})
        else:
            sft.append({**request, "completion": item.expected})
        prefs.append({**request, "chosen": item.expected, "rejected": _mistake(item)})
    return sft, prefs


def build_sample_sets(out_dir: Path = SAMPLE_DATA) -> tuple[Path, Path]:
    """Writes sft.jsonl and prefs.jsonl into `out_dir` (beside the demo clips, so the relative paths hold)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / SAMPLE_SFT.name, out_dir / SAMPLE_PREFS.name
    for path, records in zip(paths, sample_records(), strict=True):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return paths
