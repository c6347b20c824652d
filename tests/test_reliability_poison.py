"""Poison records (issue 24): one hostile line is that line's error and nothing else. A request nested hundreds
of levels deep, a per-request value past int32 (which passed validation and overflowed on the device, stopping
the run at that request on every --resume), a FIFO as audio, an absurd sample rate: each becomes its own error
line, every other request is answered, and a resume does not stop there again. The same values as command-line
flags are refused at once (one line, exit 2) instead of after the model has loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qwen_audio_jax.cli.main import main
from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.generation.options import PER_REQUEST_KEYS, GenerationOptions, validate_sampling
from qwen_audio_jax.jobs.records import read_records
from qwen_audio_jax.jsonl import MAX_DEPTH, parse_line
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._paths import REPO

INT32_MAX = 2**31 - 1
HUGE = 99999999999


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---- the JSON Lines reader ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 10, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 300, 999, 5000, 100_000])
def test_deep_nesting_is_that_lines_error(depth):
    line = f'{{"id": "deep", "messages": {_nested(depth)}}}'.encode()
    value, error = parse_line(line)  # never a RecursionError, whatever the depth
    if depth + 1 <= MAX_DEPTH:  # the object itself is one level
        assert error is None and value["messages"] is not None
    else:
        assert "nested more than" in error and str(MAX_DEPTH) in error
        assert value in ({"id": "deep"}, None)  # its id when it can be read; never the deep value itself


def test_a_deep_line_among_good_ones_keeps_its_id_and_spoils_nothing(tmp_path):
    path = tmp_path / "req.jsonl"
    lines = [
        {"id": "a", "prompt": "x"},
        f'{{"id": "deep", "prompt": "x", "audio": {_nested(500)}}}',
        f'{{"prompt": "x", "audio": {_nested(50_000)}}}',
        {"id": "b", "prompt": "y"},
    ]
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    records = read_records(path)
    assert [r.id for r in records] == ["a", "deep", "line-3", "b"]
    assert [r.error is None for r in records] == [True, False, False, True]
    assert all("nested more than" in r.error for r in records[1:3])


# ---- values past the device's 32-bit ranges ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, bad, good",
    [
        ("max_new_tokens", HUGE, INT32_MAX),
        ("min_new_tokens", HUGE, INT32_MAX),
        ("top_k", HUGE, INT32_MAX),
        ("top_k", INT32_MAX + 1, 0),
        ("seed", HUGE, 2**32 - 1),
        ("seed", -1, 0),
        ("temperature", 1e39, 3e38),
        ("repetition_penalty", 1e-45, 1e-30),
        ("repetition_penalty", 1e39, 2.0),
    ],
)
def test_per_request_values_are_checked_against_their_device_range(key, bad, good):
    assert key in PER_REQUEST_KEYS
    with pytest.raises(PromptError, match=rf"request key {key}.*(out of range|must be)"):
        GenerationOptions().for_request({key: bad}, "r")
    validate_sampling({key: good}, PromptError)  # the edge of the range is accepted


def _gen(model, inp, out, *extra):
    return ["generate", "--model", str(model), "--input", str(inp), "--output", str(out), "--no-progress", *extra]


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--top-k", HUGE),
        ("--min-new-tokens", HUGE),
        ("--max-new-tokens", HUGE),
        ("--max-new-tokens", INT32_MAX + 1),
        ("--stop-id", HUGE),
        ("--seed", 2**32),
        ("--batch-size", HUGE),
        ("--temperature", "1e39"),
        ("--repetition-penalty", "1e-45"),
    ],
)
def test_flags_past_their_range_answer_at_once(tmp_path, capsys, flag, value):
    inp = tmp_path / "req.jsonl"
    inp.write_text('{"id": "a", "prompt": "x"}\n')
    capsys.readouterr()
    status = main(_gen(tmp_path / "no-model", inp, tmp_path / "out.jsonl", flag, str(value)))
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert status == 2 and len(lines) == 1 and flag in lines[0] and "out of range" in lines[0], err
    assert not (tmp_path / "out.jsonl").exists()


# ---- end to end: one run over a file of poison records -----------------------------------------------------------
def test_poison_records_are_their_own_error_lines_and_resume_goes_past_them(tiny_model_dir, tmp_path):  # noqa: F811
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    audio = "<|audio_bos|><|AUDIO|><|audio_eos|>What is it?"
    lines = [
        json.dumps({"id": "ok-1", "messages": [{"role": "user", "content": "Hi"}]}),
        f'{{"id": "deep", "messages": {_nested(400)}}}',
        json.dumps({"id": "top-k", "messages": [{"role": "user", "content": "Hi"}], "top_k": HUGE}),
        json.dumps({"id": "min-new", "messages": [{"role": "user", "content": "Hi"}], "min_new_tokens": HUGE}),
        json.dumps({"id": "max-new", "messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": HUGE}),
        json.dumps({"id": "seed", "messages": [{"role": "user", "content": "Hi"}], "seed": HUGE}),
        json.dumps({"id": "fifo", "prompt": audio, "audio": [str(fifo)]}),
        json.dumps(
            {
                "id": "rate",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "audio", "audio": {"array": [0.0] * 1600, "sampling_rate": 9223372036854775807}},
                            {"type": "text", "text": "What is it?"},
                        ],
                    }
                ],
            }
        ),
        json.dumps({"id": "ok-2", "messages": [{"role": "user", "content": "Bye"}]}),
    ]
    inp = tmp_path / "req.jsonl"
    inp.write_text("".join(x + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "qwen_audio_jax.cli.main", *_gen(tiny_model_dir, inp, out, "--max-new-tokens", "3")]
    for extra in ([], ["--resume"]):
        proc = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=600, cwd=REPO)  # a hang fails here
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    results = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(results) == len(lines) == len(out.read_text().splitlines())
    assert results["ok-1"]["error"] is None and results["ok-2"]["error"] is None
    expect = {
        "deep": "nested more than",
        "top-k": "top_k",
        "min-new": "min_new_tokens",
        "max-new": "max_new_tokens",
        "seed": "seed",
        "fifo": "not a regular file",
        "rate": "sample rate",
    }
    for rid, words in expect.items():
        assert results[rid]["error"] and words in results[rid]["error"], results[rid]
