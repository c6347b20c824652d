"""The error contract, as a careless or hostile user meets it: every bad input below exits 2 with one `error:`
line and no traceback, and every file that existed before still exists with the same bytes. Then: one bad
request line is one error line (ids never collide, nothing is answered twice), resume with --retry-errors,
stale temporaries of killed runs, relative paths."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import soundfile as sf

from qwen_audio_jax.checkpoint.safe_write import mark
from qwen_audio_jax.cli.main import main
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._paths import REPO
from tests._requests import synth_clip

DPO = str(REPO / "configs" / "dpo_tiny.yaml")


def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir, tiny_hf_dir):  # noqa: F811
    """A workspace: a request file, a clip, a foreign directory, a foreign file, a non-results file."""
    root = tmp_path_factory.mktemp("ws")
    sf.write(root / "clip.wav", synth_clip(1.0, 1), 16000)
    (root / "req.jsonl").write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("mine, not the tool's")
    (root / "foreign.txt").write_text("a file")
    (root / "notes.jsonl").write_text('{"title": "my notes, not results"}\n')
    (root / "binary.jsonl").write_bytes(b"\x00\x01\x02binary")
    (root / "bad.yaml").write_text("train: [unclosed\n")
    return {"root": root, "model": tiny_model_dir, "hf": tiny_hf_dir}


def _gen(ws, *extra, inp=None, out=None, model=None):
    return [
        "generate",
        "--model",
        str(model or ws["model"]),
        "--input",
        str(inp or ws["root"] / "req.jsonl"),
        "--output",
        str(out or ws["root"] / "out.jsonl"),
        "--no-progress",
        *extra,
    ]


def _train(ws, *overrides, command="dpo"):
    return [
        command,
        "--config",
        DPO,
        "--no-progress",
        f"model={ws['model']}",
        f"data.train={ws['root'] / 'req.jsonl'}",
        f"output_dir={ws['root'] / 'run'}",
        *overrides,
    ]


CASES = {
    # ---- never destroy what the tool did not write
    "convert into its source": (lambda w: ["convert", str(w["hf"]), str(w["hf"]), "--overwrite"], "the input"),
    "convert inside its source": (lambda w: ["convert", str(w["hf"]), str(w["hf"] / "sub")], "the input"),
    "export into its source": (lambda w: ["export-hf", str(w["model"]), str(w["model"]), "--overwrite"], "the input"),
    "export over the source's parent": (
        lambda w: ["export-hf", str(w["model"]), str(w["model"].parent), "--overwrite"],
        "the input",
    ),
    "convert over a foreign dir": (
        lambda w: ["convert", str(w["hf"]), str(w["root"] / "foreign"), "--overwrite"],
        "not written by",
    ),
    "export over a foreign dir": (
        lambda w: ["export-hf", str(w["model"]), str(w["root"] / "foreign"), "--overwrite"],
        "not written by",
    ),
    "output is the input": (lambda w: _gen(w, "--overwrite", out=w["root"] / "req.jsonl"), "is the input file"),
    "output over a non-results file": (
        lambda w: _gen(w, "--overwrite", out=w["root"] / "notes.jsonl"),
        "not a results file",
    ),
    "output is a directory": (lambda w: _gen(w, out=w["root"] / "foreign"), "is a directory"),
    "resume and overwrite": (lambda w: _gen(w, "--resume", "--overwrite"), "contradict"),
    "retry-errors without resume": (lambda w: _gen(w, "--retry-errors"), "--resume"),
    # ---- every option validated at parse time
    "batch size -1": (lambda w: _gen(w, "--batch-size", "-1"), "--batch-size"),
    "batch size 0": (lambda w: _gen(w, "--batch-size", "0"), "--batch-size"),
    "score batch size 0": (lambda w: ["score", *_gen(w, "--batch-size", "0")[1:]], "--batch-size"),
    "max new tokens 0": (lambda w: _gen(w, "--max-new-tokens", "0"), "--max-new-tokens"),
    "max new tokens -3": (lambda w: _gen(w, "--max-new-tokens", "-3"), "--max-new-tokens"),
    "repetition penalty 0": (lambda w: _gen(w, "--repetition-penalty", "0"), "--repetition-penalty"),
    "negative temperature": (lambda w: _gen(w, "--temperature", "-0.5"), "--temperature"),
    "nan temperature": (lambda w: _gen(w, "--temperature", "nan"), "--temperature"),
    "top-p 0": (lambda w: _gen(w, "--top-p", "0"), "--top-p"),
    "top-p 1.5": (lambda w: _gen(w, "--top-p", "1.5"), "--top-p"),
    "negative top-k": (lambda w: _gen(w, "--top-k", "-1"), "--top-k"),
    "negative stop id": (lambda w: _gen(w, "--stop-id", "-2"), "--stop-id"),
    "bad mesh": (lambda w: _gen(w, "--mesh", "data=2,gpu=4"), "mesh"),
    "shard size banana": (
        lambda w: ["export-hf", str(w["model"]), str(w["root"] / "x"), "--max-shard-size", "banana"],
        "banana",
    ),
    "shard size 0": (lambda w: ["export-hf", str(w["model"]), str(w["root"] / "x"), "--max-shard-size", "0"], "0"),
    "shard size -5GB": (
        lambda w: ["export-hf", str(w["model"]), str(w["root"] / "x"), "--max-shard-size=-5GB"],
        "-5GB",
    ),
    "train steps -1": (lambda w: _train(w, "train.steps=-1"), "train.steps"),
    "train batch 0": (lambda w: _train(w, "train.batch_size=0"), "train.batch_size"),
    "train grad accum 0": (lambda w: _train(w, "train.grad_accum=0"), "train.grad_accum"),
    "train remat typo": (lambda w: _train(w, "train.remat=dots_nobatch"), "remat"),
    "train lr decay 2": (lambda w: _train(w, "optim.encoder_layer_decay=2"), "encoder_layer_decay"),
    "train unknown key": (lambda w: _train(w, "train.stepz=3"), "unknown key"),
    "train bad yaml": (lambda w: ["dpo", "--config", str(w["root"] / "bad.yaml")], "YAML"),
    "sft with a preference loss": (lambda w: _train(w, "--loss", "sigmoid", command="sft"), "unrecognized"),
    "augment with a precomputed reference": (
        lambda w: _train(w, "augment.spec_augment=true", "reference.mode=precomputed"),
        "precomputed",
    ),
    # ---- no traceback for a user error
    "input missing": (lambda w: _gen(w, inp=w["root"] / "nope.jsonl"), "not found"),
    "input is a directory": (lambda w: _gen(w, inp=w["root"] / "foreign"), "directory"),
    "input is binary": (lambda w: _gen(w, inp=w["root"] / "binary.jsonl"), "binary"),
    "model missing": (lambda w: _gen(w, model=w["root"] / "no-model", out=w["root"] / "o1.jsonl"), "config.json"),
    "model is an HF dir": (lambda w: _gen(w, model=w["hf"], out=w["root"] / "o2.jsonl"), "convert it first"),
    "unwritable compilation cache": (
        lambda w: _gen(w, "--compilation-cache", str(w["root"] / "foreign.txt" / "cache"), out=w["root"] / "o3.jsonl"),
        "compilation cache",
    ),
    "training output under a file": (
        lambda w: _train(w, f"output_dir={w['root'] / 'foreign.txt' / 'run'}"),
        "output_dir",
    ),
    "plan for an unknown device": (
        lambda w: ["plan", "--model", "tiny", "--batch", "1", "--max-len", "8", "--device", "tpu-v9"],
        "unknown device",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(ws, name, capsys):
    argv_of, words = CASES[name]
    before = _snapshot(ws["root"], ws["model"], ws["hf"])
    capsys.readouterr()
    status = main(argv_of(ws))
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("note:")]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert "Traceback" not in err
    after = _snapshot(ws["root"], ws["model"], ws["hf"])
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed was changed"
    assert set(before) <= set(after), "a file that existed was deleted"


def _write(path: Path, lines) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(
                line if isinstance(line, bytes) else (json.dumps(line) if isinstance(line, dict) else line).encode()
            )
            f.write(b"\n")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _chat(rid, text="Hello"):
    return {"id": rid, "messages": [{"role": "user", "content": text}]}


def test_one_bad_line_is_one_error_line(ws, tmp_path):
    """Undecodable bytes, lone surrogates in content or id, and requests the templates would mis-render each
    become their own error line; every other request is answered; ids are unique and collide with no real id."""
    clip = str(ws["root"] / "clip.wav")
    lines = [
        _chat("r1"),
        b'{"id": "latin", "messages": [{"role": "user", "content": "caf\xe9"}]}',  # a Latin-1 byte
        '{"id": "sur", "messages": [{"role": "user", "content": "\\ud800"}]}',  # valid JSON, invalid Unicode
        '{"id": "\\udc00x", "messages": [{"role": "user", "content": "hi"}]}',
        _chat("line-3"),  # a real id that an error line's default name would collide with
        {**_chat("typo"), "max_new_token": 3},
        {"id": "role", "messages": [{"role": "narrator", "content": "Once"}]},
        {"id": "image", "messages": [{"role": "user", "content": [{"type": "image", "image": "x.png"}]}]},
        {**_chat("both"), "prompt": "hello"},
        {"id": "lang", "task": "asr", "audio": clip, "lang": "klingon"},
        {"id": "one-path", "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Caption:", "audio": clip},
        {**_chat("budget"), "max_new_tokens": 0},
        _chat("r1"),  # a repeated id
        _chat("r2"),
    ]
    inp = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert main(_gen(ws, "--max-new-tokens", "4", "--compilation-cache", "", inp=inp, out=out)) == 0
    results = _read(out)
    ids = [r["id"] for r in results]
    assert len(ids) == len(set(ids)) == len(lines)
    by_id = {r["id"]: r for r in results}
    for rid in ("r1", "line-3", "one-path", "r2"):
        assert by_id[rid]["error"] is None, by_id[rid]
    errors = {r["id"]: r["error"] for r in results if r["error"]}
    assert len(errors) == len(lines) - 4
    assert "UTF-8" in errors["latin"] and "Unicode" in errors["sur"]
    assert "Unicode" in errors["line-4"] and "line-3#2" not in errors  # the bad id got its own collision-free name
    assert "max_new_token" in errors["typo"] and "narrator" in errors["role"] and "image" in errors["image"]
    assert "not messages and prompt" in errors["both"] and "klingon" in errors["lang"]
    assert "max_new_tokens" in errors["budget"] and "earlier request" in errors["r1#line-13"]
    # Resume after the fact: nothing is redone, nothing lost, no id twice.
    assert main(_gen(ws, "--max-new-tokens", "4", "--resume", "--compilation-cache", "", inp=inp, out=out)) == 0
    assert _read(out) == results


def test_resume_retry_errors(ws, tmp_path):
    clip = tmp_path / "late.wav"
    inp = _write(
        tmp_path / "in.jsonl",
        [
            _chat("ok"),
            {
                "id": "late",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "audio", "audio": str(clip)}, {"type": "text", "text": "What is it?"}],
                    }
                ],
            },
        ],
    )
    out = tmp_path / "out.jsonl"
    args = _gen(ws, "--max-new-tokens", "3", "--compilation-cache", "", inp=inp, out=out)
    assert main(args) == 0
    first = {r["id"]: r for r in _read(out)}
    assert first["ok"]["error"] is None and "late.wav" in first["late"]["error"]
    sf.write(clip, synth_clip(0.7, 2), 16000)  # the user fixes the input
    assert main(args + ["--resume"]) == 0 and _read(out) == list(first.values())  # errors are kept by default
    assert main(args + ["--resume", "--retry-errors"]) == 0
    again = {r["id"]: r for r in _read(out)}
    assert len(_read(out)) == 2 and again["ok"] == first["ok"] and again["late"]["error"] is None


def test_stale_temporaries_are_removed_with_a_warning(ws, tmp_path, capsys):
    dst = tmp_path / "model"
    stale = tmp_path / ".model.tmp-killed"
    stale.mkdir()
    mark(stale, "model")
    (stale / "params.partial").write_bytes(b"x" * 1000)
    foreign = tmp_path / ".model.tmp-not-ours"
    foreign.mkdir()
    (foreign / "keep").write_text("something else")
    assert main(["convert", str(ws["hf"]), str(dst), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert not stale.exists() and "interrupted run" in out.out + out.err and str(stale) in out.out + out.err
    assert (foreign / "keep").read_text() == "something else"


def test_relative_paths_work(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "req.jsonl").write_text(json.dumps(_chat("a")) + "\n")
    rel_model = os.path.relpath(ws["model"], tmp_path)
    assert (
        main(
            [
                "generate",
                "--model",
                rel_model,
                "--input",
                "req.jsonl",
                "--output",
                "res/out.jsonl",
                "--max-new-tokens",
                "2",
                "--no-progress",
                "--compilation-cache",
                "",
            ]
        )
        == 0
    )
    assert _read(tmp_path / "res" / "out.jsonl")[0]["error"] is None
    assert main(["convert", os.path.relpath(ws["hf"], tmp_path), "m", "--no-progress"]) == 0
    assert main(["export-hf", "m", "hf", "--no-progress"]) == 0 and Path("hf/config.json").is_file()


def test_training_data_with_bad_lines_trains_and_counts_them(ws, tmp_path):
    from tests._synthetic_prefs import write_preference_set

    data = write_preference_set(tmp_path / "d", 8, seed=4)
    with open(data, "ab") as f:
        f.write(b'{"id": "latin", "prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
        f.write(b'{"id": "sur", "prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n')
    out = tmp_path / "run"
    assert (
        main(
            [
                "dpo",
                "--config",
                DPO,
                "--no-progress",
                f"model={ws['model']}",
                f"data.train={data}",
                f"output_dir={out}",
                "train.steps=2",
                "train.batch_size=2",
            ]
        )
        == 0
    )
    report = json.loads((out / "data_report.json").read_text())
    assert report["dropped"]["bad_records"] == 2 and report["kept"] == 8


def test_resumed_training_with_changed_settings_is_refused(ws, tmp_path, capsys):
    from tests._synthetic_prefs import write_preference_set

    data = write_preference_set(tmp_path / "d", 4, seed=5)
    args = [
        "dpo",
        "--config",
        DPO,
        "--no-progress",
        f"model={ws['model']}",
        f"data.train={data}",
        f"output_dir={tmp_path / 'run'}",
        "train.batch_size=2",
    ]
    assert main(args + ["train.steps=1"]) == 0
    capsys.readouterr()
    assert main(args + ["train.steps=2", "loss.beta=0.5"]) == 2
    err = capsys.readouterr().err
    assert "loss.beta" in err and err.count("\n") == 1
    assert main(args + ["train.steps=2"]) == 0  # extending the same run is fine
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
