"""`generate` and `score` end to end: JSONL contract, per-request errors, resume after SIGKILL, score parity."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax import api
from qwen_audio_jax.cli.main import main
from qwen_audio_jax.generation.options import GenerationOptions
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._oracles import require
from tests._paths import REPO
from tests._requests import synth_clip
from tests._sigkill import kill_when

NEW = 12


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    paths = []
    for i, sec in enumerate([1.5, 3.2, 0.8, 5.0]):
        p = d / f"clip{i}.wav"
        sf.write(p, synth_clip(sec, seed=i), 16000)
        paths.append(str(p))
    corrupt = d / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 3)
    return paths, str(corrupt), str(d / "missing.wav")


def _write(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line))
            f.write("\n")


def _read(path):
    return [json.loads(line) for line in open(path)]


def _chat(rid, audio, text="What is this?"):
    return {
        "id": rid,
        "messages": [{"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": text}]}],
    }


def test_generate_contract_and_errors(tiny_model_dir, clips, tmp_path):  # noqa: F811
    good, corrupt, missing = clips
    requests = [
        _chat("chat", good[0]),
        {
            "id": "raw",
            "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:",
            "audio": [good[1]],
        },
        {"id": "task", "task": "asr", "audio": good[2]},
        {"id": "text", "messages": [{"role": "user", "content": "Hello there"}]},
        _chat("missing-audio", missing),
        _chat("corrupt-audio", corrupt),
        {
            "id": "mismatch",
            "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|> and <|audio_bos|><|AUDIO|><|audio_eos|>",
            "audio": [good[0]],
        },
        {"id": "too-long", "messages": [{"role": "user", "content": "word " * 9000}]},
        "{not json",
        {"messages": [{"role": "user", "content": "no id"}]},
        _chat("chat2", good[3], "Describe it."),
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(inp, requests)
    argv = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--max-new-tokens",
        str(NEW),
        "--batch-size",
        "2",
        "--no-progress",
        "--compilation-cache",
        "",
    ]
    assert main(argv) == 0
    results = {r["id"]: r for r in _read(out)}
    assert len(_read(out)) == len(requests) == len(results)
    for rid in ("chat", "raw", "task", "text", "chat2"):
        r = results[rid]
        assert r["error"] is None and r["finish_reason"] in ("stop", "length") and 0 < len(r["token_ids"]) <= NEW
        assert isinstance(r["text"], str)
    assert "missing.wav" in results["missing-audio"]["error"]
    assert "corrupt.wav" in results["corrupt-audio"]["error"]
    assert "2 <|AUDIO|> placeholders but 1 audio" in results["mismatch"]["error"]
    assert "limit" in results["too-long"]["error"]
    assert "line 9" in results["line-9"]["error"] and "id" in results["line-10"]["error"]
    # The same requests through the Python API give the same tokens.
    model = api.load(tiny_model_dir)
    direct = api.generate(model, [requests[0], requests[3]], GenerationOptions(max_new_tokens=NEW), batch_size=2)
    assert [d["token_ids"] for d in direct] == [results["chat"]["token_ids"], results["text"]["token_ids"]]
    # Existing output: refused without --resume / --overwrite, nothing lost.
    assert main(argv) == 2
    assert len(_read(out)) == len(requests)


def test_resume_after_sigkill(tiny_model_dir, clips, tmp_path):  # noqa: F811
    good, _, _ = clips
    requests = [_chat(f"r{i}", good[i % 4], f"Question number {i}?") for i in range(24)]
    inp = tmp_path / "in.jsonl"
    _write(inp, requests)
    # No compilation cache here: every run starts cold, which keeps the kill landing mid-run.
    base = [
        sys.executable,
        "-m",
        "qwen_audio_jax.cli.main",
        "generate",
        "--model",
        str(tiny_model_dir),
        "--input",
        str(inp),
        "--max-new-tokens",
        "24",
        "--batch-size",
        "2",
        "--no-progress",
        "--compilation-cache",
        "",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    full = tmp_path / "full.jsonl"
    subprocess.run(base + ["--output", str(full)], check=True, env=env, cwd=REPO, capture_output=True)

    part = tmp_path / "part.jsonl"
    ready = lambda: part.exists() and len(part.read_bytes().splitlines()) >= 4  # noqa: E731
    kill_when(base + ["--output", str(part)], ready, timeout_s=300, env=env, cwd=REPO)
    done_before = len(part.read_bytes().splitlines())
    assert 4 <= done_before < 24, "the kill must land mid-run"
    with open(part, "ab") as f:
        f.write(b'{"id": "r-torn", "te')  # a torn last line, as a kill during a write leaves
    subprocess.run(base + ["--output", str(part), "--resume"], check=True, env=env, cwd=REPO, capture_output=True)
    resumed = _read(part)
    assert sorted(r["id"] for r in resumed) == sorted(r["id"] for r in requests)  # each exactly once
    want = {r["id"]: r["token_ids"] for r in _read(full)}
    assert {r["id"]: r["token_ids"] for r in resumed} == want


@pytest.mark.parity
def test_score_matches_transformers(tiny_model_dir, tiny_hf_dir, clips, tmp_path):  # noqa: F811
    torch = require("torch", "the parity oracle")
    from transformers import Qwen2AudioForConditionalGeneration

    good, _, missing = clips
    requests = [
        {**_chat("chat", good[0]), "completion": "It is a dog barking loudly."},
        {
            "id": "raw",
            "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:",
            "audio": [good[1]],
            "completion": " A bell rings.",
        },
        {"id": "mc", "messages": [{"role": "user", "content": "Pick one."}], "completions": ["Yes.", "No, never."]},
        {**_chat("bad", missing), "completion": "x"},
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "scores.jsonl"
    _write(inp, requests)
    assert (
        main(
            [
                "score",
                "--model",
                str(tiny_model_dir),
                "--input",
                str(inp),
                "--output",
                str(out),
                "--batch-size",
                "2",
                "--no-progress",
                "--compilation-cache",
                "",
            ]
        )
        == 0
    )
    got = {r["id"]: r for r in _read(out)}
    assert "missing.wav" in got["bad"]["error"]

    model = api.load(tiny_model_dir)
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_hf_dir, torch_dtype=torch.float32).eval()

    def reference(record, completion):
        p = model.processor.prepare({**record, "completion": completion})
        ids = torch.tensor([p.token_ids])
        kw = {}
        if p.mels:
            kw["input_features"] = torch.from_numpy(np.stack(p.mels))
            kw["feature_attention_mask"] = (torch.arange(3000)[None] < torch.tensor(p.mel_lengths)[:, None]).long()
        with torch.no_grad():
            logp = torch.log_softmax(hf(input_ids=ids, **kw).logits[0], -1)
        mask = np.asarray(p.completion_mask)
        total = sum(float(logp[t - 1, p.token_ids[t]]) for t in range(1, len(mask)) if mask[t])
        return total, int(mask[1:].sum())

    for rid, record, completion in [
        ("chat", requests[0], requests[0]["completion"]),
        ("raw", requests[1], requests[1]["completion"]),
    ]:
        want, n = reference({k: v for k, v in record.items() if k != "completion"}, completion)
        assert got[rid]["num_tokens"] == n > 0
        assert abs(got[rid]["logprob"] - want) <= 1e-4
    for i, c in enumerate(requests[2]["completions"]):
        want, n = reference({k: v for k, v in requests[2].items() if k != "completions"}, c)
        assert abs(got["mc"]["logprob"][i] - want) <= 1e-4 and got["mc"]["num_tokens"][i] == n


def test_compilation_cache_dir_precedence(monkeypatch, tmp_path):
    """`--compilation-cache` beats $QWEN_AUDIO_JAX_COMPILATION_CACHE beats the default; '' turns it off."""
    from qwen_audio_jax.runtime import CACHE_ENV, DEFAULT_CACHE_DIR, resolve_cache_dir

    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert resolve_cache_dir(None) == DEFAULT_CACHE_DIR
    assert resolve_cache_dir(str(tmp_path / "a")) == tmp_path / "a"
    assert resolve_cache_dir("") is None
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir(None) == tmp_path / "env"
    assert resolve_cache_dir(str(tmp_path / "a")) == tmp_path / "a"
    assert resolve_cache_dir("") is None
    monkeypatch.setenv(CACHE_ENV, "")
    assert resolve_cache_dir(None) is None
