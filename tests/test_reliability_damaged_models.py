"""Damaged model dirs (issue 24): a config.json edited to other shapes, deleted or truncated array files, a
truncated metadata file printed Orbax's "Exception ignored" tracebacks (thousands of lines), its advice ("set
strict=False"), or "a bug in qwen-audio-jax". Every command that reads a model dir now says it in one `error:`
line naming the dir and what is wrong, with exit status 2. Subprocess runs: the noise came from Orbax's threads,
some of it after the error line, at exit, where only a real command line shows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._paths import REPO


def _edit_config(model: Path) -> None:
    doc = json.loads((model / "config.json").read_text())
    doc["model"]["decoder"]["intermediate_size"] *= 2  # a valid config, of another model's shapes
    (model / "config.json").write_text(json.dumps(doc))


def _data_files(model: Path) -> list[Path]:
    """The files holding the arrays' bytes (OCDBT: params/state/ocdbt.process_N/d/*)."""
    return [p for p in (model / "params").rglob("*") if p.is_file() and p.parent.parent.name.startswith("ocdbt.")]


def _delete_arrays(model: Path) -> None:
    for p in _data_files(model):
        p.unlink()


def _truncate_arrays(model: Path) -> None:
    biggest = max(_data_files(model), key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)


def _truncate_metadata(model: Path) -> None:
    os.truncate(model / "params" / "state" / "_METADATA", 100)


# damage -> (how, words the error line holds)
DAMAGE = {
    "config.json edited": (_edit_config, "config.json does not match the stored weights"),
    "array files deleted": (_delete_arrays, "a file is missing"),
    "an array file truncated": (_truncate_arrays, "a file is truncated"),
    "the metadata truncated": (_truncate_metadata, "metadata"),
}
# The three ways a model dir is read (api.load: generate, score, eval; training; export's streaming reader) meet
# every damage; score and eval, the same reader as generate, one damage each.
CASES = [(d, c) for d in DAMAGE for c in ("generate", "sft", "export-hf")]
CASES += [("config.json edited", "score"), ("array files deleted", "eval")]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from tests._model_dirs import build_tiny_model_dir

    root = tmp_path_factory.mktemp("damaged")
    build_tiny_model_dir(root / "model")
    for name, (damage, _) in DAMAGE.items():
        shutil.copytree(root / "model", root / name)
        damage(root / name)
    (root / "req.jsonl").write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    (root / "score.jsonl").write_text(json.dumps({"id": "a", "prompt": "Hi", "completions": ["there"]}) + "\n")
    (root / "sft.jsonl").write_text(
        json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})
        + "\n"
    )
    manifest = {"id": "a", "audio": "a.wav", "reference": "hi", "source": "s", "language": "en"}
    (root / "manifest.jsonl").write_text(json.dumps(manifest) + "\n")
    return root


def _argv(command: str, model: Path, root: Path, out: Path) -> list[str]:
    infer = ["--model", str(model), "--output", str(out / "results.jsonl"), "--no-progress"]
    return {
        "generate": ["generate", "--input", str(root / "req.jsonl"), *infer],
        "score": ["score", "--input", str(root / "score.jsonl"), *infer],
        "eval": ["eval", "--task", "asr", "--manifest", str(root / "manifest.jsonl"), "--model", str(model)]
        + ["--output", str(out / "ev"), "--no-progress"],
        "sft": ["sft", "--no-progress", f"model={model}", f"data.train={root / 'sft.jsonl'}", f"output_dir={out}"],
        "export-hf": ["export-hf", str(model), str(out / "hf"), "--no-progress"],
    }[command]


@pytest.mark.parametrize("damage, command", CASES)
def test_a_damaged_model_dir_is_one_line(ws, tmp_path, damage, command):
    model = ws / damage
    argv = [sys.executable, "-m", "qwen_audio_jax.cli.main", *_argv(command, model, ws, tmp_path / "out")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ})
    lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("data: ")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {model}: "), proc.stderr[-3000:]
    assert DAMAGE[damage][1] in lines[0] and "convert" in lines[0], lines[0]
    for noise in ("Traceback", "Exception ignored", "internal error", "strict=False", "TensorStore", "orbax"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "hf").exists() and not (tmp_path / "out" / "results.jsonl").exists()
