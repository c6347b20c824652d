"""A full disk and a read-only destination (issue 24): one `error:` line and exit 2 (Orbax printed 220-782 lines
of its threads' tracebacks, then "a bug in qwen-audio-jax"), nothing half-written left behind, and a results
file keeps its complete lines. Needs a small tmpfs (root and mount); skipped with the reason elsewhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from qwen_audio_jax.cli.main import main
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401


def _mount(path: Path, options: str) -> None:
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}); needs root")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, with a helper to fill it and one to make it read-only."""
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(disk, "size=2m")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def _read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def _inputs(tmp_path: Path) -> dict:
    req = tmp_path / "req.jsonl"
    req.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    man = tmp_path / "man.jsonl"
    man.write_text(json.dumps({"id": "a", "audio": "a.wav", "reference": "hi", "source": "s", "language": "en"}) + "\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "a", "text": "hi", "error": None}) + "\n")
    return {"req": req, "man": man, "preds": preds}


def _commands(model, hf, disk, i) -> dict:
    return {
        "convert": ["convert", str(hf), str(disk / "m"), "--no-progress"],
        "export-hf": ["export-hf", str(model), str(disk / "h"), "--no-progress"],
        "generate": ["generate", "--model", str(model), "--input", str(i["req"]), "--output", str(disk / "o.jsonl")]
        + ["--max-new-tokens", "2", "--no-progress"],
        "eval": ["eval", "--task", "asr", "--manifest", str(i["man"]), "--predictions", str(i["preds"])]
        + ["--output", str(disk / "ev"), "--no-progress"],
    }


def _one_line(capsys, *words: str) -> str:
    """The one `error:` line, holding one of `words`."""
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and any(w in lines[0] for w in words), err
    return lines[0]


@pytest.mark.parametrize("command", ["convert", "export-hf", "generate", "eval"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(
    tiny_model_dir,  # noqa: F811
    tiny_hf_dir,  # noqa: F811
    small_disk,
    tmp_path,
    capsys,
    command,
):
    if command in ("generate", "eval"):
        _fill(small_disk)  # the model dirs do not fit in 2 MB anyway; results and scores need a full disk
    argv = _commands(tiny_model_dir, tiny_hf_dir, small_disk, _inputs(tmp_path))[command]
    capsys.readouterr()
    assert main(argv) == 2
    _one_line(capsys, "No space left on device")
    left = sorted(p.name for p in small_disk.iterdir() if p.name != "filler")
    allowed = {"generate": [[], ["o.jsonl"]], "eval": [[], ["ev"]]}.get(command, [[]])
    assert left in allowed, left
    if left == ["o.jsonl"]:
        assert (small_disk / "o.jsonl").read_text() == "", "a results file holds complete lines only"


@pytest.mark.parametrize("command", ["convert", "export-hf", "generate", "eval", "sft"])
def test_a_read_only_destination_is_one_line_before_anything_runs(
    tiny_model_dir,  # noqa: F811
    tiny_hf_dir,  # noqa: F811
    small_disk,
    tmp_path,
    capsys,
    command,
):
    inputs = _inputs(tmp_path)
    commands = _commands(tiny_model_dir, tiny_hf_dir, small_disk, inputs)
    commands["sft"] = [
        "sft",
        f"model={tiny_model_dir}",
        f"data.train={inputs['req']}",
        f"output_dir={small_disk / 'r'}",
    ]
    _read_only(small_disk)
    capsys.readouterr()
    assert main(commands[command]) == 2
    _one_line(capsys, "Read-only file system", "not writable")
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("command", ["convert", "export-hf"])
def test_a_mount_point_as_the_destination_is_one_line_before_anything_runs(
    tiny_model_dir,  # noqa: F811
    tiny_hf_dir,  # noqa: F811
    small_disk,
    capsys,
    command,
):
    """A directory is replaced by a rename, which a mount point refuses (EBUSY): it was an internal error after
    the whole model had been written beside it."""
    source = {"convert": tiny_hf_dir, "export-hf": tiny_model_dir}[command]
    capsys.readouterr()
    assert main([command, str(source), str(small_disk), "--overwrite", "--no-progress"]) == 2
    _one_line(capsys, "mount point")
    assert list(small_disk.iterdir()) == [] and not list(small_disk.parent.glob(f".{small_disk.name}.*"))
