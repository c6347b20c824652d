"""Destinations (issue 24): training and eval get the same sources check as convert / export-hf, a directory is
marked as the tool's only when the tool made it, and no command writes over a file it did not write. Every case
of the table exits 2 with one `error:` line, and every file that existed before is still there, unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from qwen_audio_jax.checkpoint.safe_write import DIR_LOCK, MARKER, is_ours, release_work_dir
from qwen_audio_jax.cli.main import main
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._paths import REPO
from tests._synthetic_prefs import write_preference_set

DPO = str(REPO / "configs" / "dpo_tiny.yaml")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir, tiny_hf_dir):  # noqa: F811
    """exp/model (a model dir the user trains from), data, a reference model, an eval manifest and predictions,
    and directories of the user's own that happen to hold names the tool writes."""
    root = tmp_path_factory.mktemp("dest")
    shutil.copytree(tiny_model_dir, root / "exp" / "model")
    shutil.copytree(tiny_model_dir, root / "refs" / "ref")
    write_preference_set(root / "data", 4, seed=3, preference=False)
    write_preference_set(root / "data", 4, seed=3)
    (root / "userrun" / "model").mkdir(parents=True)
    (root / "userrun" / "model" / "notes.txt").write_text("the user's, not a model dir")
    manifest = [{"id": "u0", "audio": "a.wav", "reference": "hello", "source": "s", "language": "en"}]
    (root / "ev").mkdir()
    (root / "ev" / "asr.jsonl").write_text("".join(json.dumps(x) + "\n" for x in manifest))
    (root / "ev" / "requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in manifest))  # a manifest
    (root / "preds.jsonl").write_text(json.dumps({"id": "u0", "text": "hello", "error": None}) + "\n")
    for name in ("requests.jsonl", "predictions.jsonl", "metrics.json"):
        (root / f"user-{name}").mkdir()
        (root / f"user-{name}" / name).write_text('{"id": "mine", "error": null}\n')
    (root / "file.txt").write_text("a file")
    return {"root": root, "model": root / "exp" / "model", "hf": tiny_hf_dir}


def _train(w, *overrides, command="sft", data="data/sft.jsonl"):
    r = w["root"]
    return [
        command,
        "--config",
        DPO,
        "--no-progress",
        f"model={r / 'exp' / 'model'}",
        f"data.train={r / data}",
        *overrides,
    ]


def _eval(w, out, *extra, manifest="ev/asr.jsonl"):
    return [
        "eval",
        "--task",
        "asr",
        "--manifest",
        str(w["root"] / manifest),
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]


CASES = {
    # training: the model, the reference model and the data are never inside, around or equal to output_dir
    "sft into the model's parent": (lambda w: _train(w, f"output_dir={w['root'] / 'exp'}"), "the model"),
    "sft into the model": (lambda w: _train(w, f"output_dir={w['model']}"), "the model"),
    "sft inside the model": (lambda w: _train(w, f"output_dir={w['model'] / 'run'}"), "the model"),
    "sft into the data's folder": (lambda w: _train(w, f"output_dir={w['root'] / 'data'}"), "training data"),
    "sft into the workspace": (lambda w: _train(w, f"output_dir={w['root']}"), "the same as, inside, or a parent"),
    "dpo around the reference model": (
        lambda w: _train(
            w,
            f"output_dir={w['root'] / 'refs'}",
            f"reference.model={w['root'] / 'refs' / 'ref'}",
            command="dpo",
            data="data/prefs.jsonl",
        ),
        "reference model",
    ),
    "training over a foreign OUTPUT/model": (
        lambda w: _train(w, f"output_dir={w['root'] / 'userrun'}"),
        "did not write",
    ),
    "training output_dir is a file": (lambda w: _train(w, f"output_dir={w['root'] / 'file.txt'}"), "output_dir"),
    # eval: the manifest is a source; the files it writes are never the user's
    "eval manifest inside the output": (
        lambda w: _eval(
            w, w["root"] / "ev", "--predictions", str(w["root"] / "preds.jsonl"), manifest="ev/requests.jsonl"
        ),
        "manifest",
    ),
    "eval output around the manifest": (
        lambda w: _eval(w, w["root"], "--predictions", str(w["root"] / "preds.jsonl")),
        "manifest",
    ),
    "eval over a foreign requests.jsonl": (
        lambda w: _eval(w, w["root"] / "user-requests.jsonl", "--model", str(w["model"])),
        "requests.jsonl",
    ),
    "eval over a foreign predictions.jsonl": (
        lambda w: _eval(w, w["root"] / "user-predictions.jsonl", "--model", str(w["model"])),
        "predictions.jsonl",
    ),
    "eval scores over a foreign metrics.json": (
        lambda w: _eval(w, w["root"] / "user-metrics.json", "--predictions", str(w["root"] / "preds.jsonl")),
        "metrics.json",
    ),
    "eval predictions are its own metrics": (
        lambda w: _eval(
            w, w["root"] / "user-metrics.json", "--predictions", str(w["root"] / "user-metrics.json" / "metrics.json")
        ),
        "eval writes",
    ),
    "eval output is a file": (
        lambda w: _eval(w, w["root"] / "file.txt", "--predictions", str(w["root"] / "preds.jsonl")),
        "is a file",
    ),
    "eval output under a file": (
        lambda w: _eval(w, w["root"] / "file.txt" / "out", "--model", str(w["model"])),
        "is a file",
    ),
    # files and folders that cannot be created
    "convert under a file": (lambda w: ["convert", str(w["hf"]), str(w["root"] / "file.txt" / "m")], "is a file"),
    "export-hf under a file": (
        lambda w: ["export-hf", str(w["model"]), str(w["root"] / "file.txt" / "h")],
        "is a file",
    ),
    "generate output under a file": (
        lambda w: [
            "generate",
            "--model",
            str(w["model"]),
            "--input",
            str(w["root"] / "preds.jsonl"),
            "--output",
            str(w["root"] / "file.txt" / "out.jsonl"),
        ],
        "is a file",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_destination_is_refused_and_nothing_is_lost(ws, name, capsys):
    argv_of, words = CASES[name]
    before = _snapshot(ws["root"])
    capsys.readouterr()
    status = main(argv_of(ws))
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("note:")]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    after = _snapshot(ws["root"])
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed was changed"
    assert set(before) <= set(after), "a file that existed was deleted"
    assert set(after) == set(before), "a refused run wrote a file (a marker, a lock...)"


# ---- only what the tool made is marked ---------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["new", "empty", "the user's"])
def test_training_marks_its_output_dir_only_when_it_made_it(ws, tmp_path, state):
    from qwen_audio_jax.training.run import TrainingRun
    from qwen_audio_jax.training.run_config import load_run_config

    out = tmp_path / "out"
    if state != "new":
        out.mkdir()
    if state == "the user's":
        (out / "thesis.tex").write_text("years of work")
    cfg = load_run_config(
        DPO, [f"model={ws['model']}", f"data.train={ws['root'] / 'data' / 'prefs.jsonl'}", f"output_dir={out}"]
    )
    try:
        run = TrainingRun.build(cfg, log=lambda m: None)
        assert run.out == out and (out / DIR_LOCK).exists(), "the output_dir is locked while the run is alive"
    finally:
        release_work_dir(out)
    assert not (out / DIR_LOCK).exists()
    assert is_ours(out) == (state != "the user's")
    if state == "the user's":  # so a later export-hf --overwrite there refuses instead of deleting the user's work
        assert main(["export-hf", str(ws["model"]), str(out), "--overwrite", "--no-progress"]) == 2
        assert (out / "thesis.tex").read_text() == "years of work"


def test_eval_owns_only_the_directories_it_made(ws, tmp_path):
    preds = str(ws["root"] / "preds.jsonl")
    own = tmp_path / "own"
    assert main(_eval(ws, own, "--predictions", preds)) == 0
    assert is_ours(own) and (own / "metrics.json").exists()
    assert main(_eval(ws, own, "--predictions", preds)) == 0, "a rerun replaces the files eval wrote"
    # A folder of the user's that holds none of eval's names: eval adds its files, claims nothing.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("keep")
    assert main(_eval(ws, mine, "--predictions", preds)) == 0
    assert not is_ours(mine) and (mine / "notes.md").read_text() == "keep" and (mine / "metrics.json").exists()
    assert main(_eval(ws, mine, "--predictions", preds)) == 2, "its metrics.json is now indistinguishable"


def test_a_destination_that_cannot_be_renamed_into_place_is_one_line_and_left_as_it_was(tmp_path, monkeypatch):
    """The last step of an atomic write is a rename; when the destination refuses it (EBUSY: it became a mount
    point meanwhile, say), the previous directory is put back and the error is one line, not an internal one."""
    import errno
    import os

    from qwen_audio_jax.checkpoint.safe_write import atomic_directory
    from qwen_audio_jax.errors import OutputError

    dst = tmp_path / "dst"
    with atomic_directory(dst, "model") as tmp:
        (tmp / "old.txt").write_text("the previous result")
    real = os.rename

    def busy(src, target, *a, **k):
        if str(target) == str(dst) and "tmp-" in str(src):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(src))
        return real(src, target, *a, **k)

    monkeypatch.setattr(os, "rename", busy)
    with pytest.raises(OutputError, match="cannot put the result in place") as err:
        with atomic_directory(dst, "model", overwrite=True) as tmp:
            (tmp / "new.txt").write_text("the new result")
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert sorted(p.name for p in dst.iterdir() if p.name != MARKER) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["dst"], "no temporary left"
