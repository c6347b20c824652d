"""A newcomer's first hour (issue 21): prompts written for the other model generation are refused, results can be
had in input order without losing resume safety, and the small things: --version, every command's --help has a
description, plan's presets are the README's, convert / export-hf / training output dirs follow the umask, a
learning-rate error names values."""

from __future__ import annotations

import json
import os
import re
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from qwen_audio_jax.checkpoint.safe_write import MARKER
from qwen_audio_jax.cli.main import build_parser, main
from qwen_audio_jax.demo.bundle import DEMO_CLIPS, DEMO_MODEL, load_demo_items
from qwen_audio_jax.errors import ConfigError, PromptError
from qwen_audio_jax.jobs.generate import resolve_audio
from qwen_audio_jax.jobs.results import order_results
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.text.prompt_generation import check_prompt_generation
from tests._paths import REPO
from tests._tokenizer_fixtures import *  # noqa: F403 (session fixtures)

V1_PROMPT = "<audio>{}</audio><|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"
V2_PROMPT = "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>"
CLIP = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440).astype(np.float32) * 0.3


# ---- prompts for the other model generation ------------------------------------------------------------------
def test_v1_prompt_on_a_qwen2_audio_model_is_refused(qwen2_tokenizer):
    processor = Processor(qwen2_tokenizer)
    with pytest.raises(PromptError, match=r"written for Qwen-Audio \(v1\) \(it has <audio>, </audio>, <\|start"):
        processor.prepare({"prompt": V1_PROMPT.format("clip.wav")})
    chat = [{"role": "user", "content": [{"type": "text", "text": "<audio>clip.wav</audio> What is it?"}]}]
    with pytest.raises(PromptError, match=r"chat turns are written for Qwen-Audio \(v1\).*\"type\": \"audio\""):
        processor.prepare({"messages": chat})
    ok = processor.prepare({"prompt": V2_PROMPT, "audio": [CLIP]})  # its own form, `<|en|>` as text included
    assert ok.token_ids.count(qwen2_tokenizer.audio_token_id) > 0


def test_qwen2_audio_prompt_on_a_v1_model_is_refused(qwen_v1_tokenizer):
    processor = Processor(qwen_v1_tokenizer)
    with pytest.raises(PromptError, match=r"written for Qwen2-Audio \(it has <\|audio_bos\|>, <\|AUDIO\|>, <\|audio"):
        processor.prepare({"prompt": V2_PROMPT, "audio": [CLIP]})
    ok = processor.prepare_prompt(V1_PROMPT.format("x"), [CLIP])
    assert ok.token_ids.count(qwen_v1_tokenizer.audio_token_id) > 0


def test_a_tag_the_models_own_tokenizer_has_is_not_foreign():
    class FineTuned:  # a Qwen2-Audio fine-tune that added <|startoftranscript|> as a special token
        special_ids = frozenset({7})

        def token_to_id(self, token):
            return 7 if token == "<|startoftranscript|>" else None

    check_prompt_generation("<|startoftranscript|> hello", FineTuned(), v1=False)
    with pytest.raises(PromptError, match="<audio>"):
        check_prompt_generation("<audio>x</audio><|startoftranscript|>", FineTuned(), v1=False)


def _requests(tmp_path: Path, items) -> Path:
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(resolve_audio(it.request, DEMO_CLIPS)) + "\n" for it in items))
    return path


def test_generate_answers_a_wrong_generation_prompt_with_its_error_line(tmp_path):
    item = load_demo_items()[0]
    clip = str(DEMO_CLIPS / item.clip)
    requests = tmp_path / "requests.jsonl"
    lines = [{"id": "v1", "prompt": V1_PROMPT.format(clip)}, {"id": "v2", "prompt": V2_PROMPT, "audio": [clip]}]
    requests.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "results.jsonl"
    args = ["generate", "--model", str(DEMO_MODEL), "--input", str(requests), "--output", str(out), "--no-progress"]
    assert main(args) == 0
    results = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert results["v1"]["text"] is None and "written for Qwen-Audio (v1)" in results["v1"]["error"]
    assert results["v2"]["error"] is None and results["v2"]["text"] == item.trained_model_output


# ---- result order ---------------------------------------------------------------------------------------------
def test_order_results_only_rewrites_a_complete_file(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [json.dumps({"id": i, "text": f"answer {i}", "error": None}) for i in ("c", "a", "old")]
    path.write_text("\n".join(lines) + "\n" + '{"id": "b", "te')  # "b" torn mid-write: not answered
    before = path.read_bytes()
    assert order_results(path, ["a", "b", "c"]) is False and path.read_bytes() == before
    lines.append(json.dumps({"id": "b", "text": None, "error": "bad"}))
    path.write_text("\n".join(lines) + "\n")
    assert order_results(path, ["a", "b", "c"]) is True
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c", "old"]
    assert sorted(path.read_text().splitlines()) == sorted(lines)  # every line kept as it was
    assert not list(tmp_path.glob(".*tmp"))


def test_generate_ordered_after_an_interrupted_run(tmp_path):
    """An interrupted run left two results in completion order (the later request first); `--resume --ordered`
    answers the rest after them, then rewrites the file in input order, every earlier line kept byte for byte."""
    items = load_demo_items()[:5]
    requests, out = _requests(tmp_path, items), tmp_path / "results.jsonl"
    done = [
        {"id": items[i].request["id"], "text": f"kept {i}", "token_ids": [], "finish_reason": "stop", "error": None}
        for i in (3, 1)
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in done))
    args = ["generate", "--model", str(DEMO_MODEL), "--input", str(requests), "--output", str(out), "--no-progress"]
    assert main([*args, "--resume", "--ordered"]) == 0
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in results] == [it.request["id"] for it in items]
    assert [results[i]["text"] for i in (1, 3)] == ["kept 1", "kept 3"]  # not run again
    assert [results[i]["text"] for i in (0, 2, 4)] == [items[i].trained_model_output for i in (0, 2, 4)]


# ---- small things ---------------------------------------------------------------------------------------------
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"qwen-audio-jax {version('qwen-audio-jax')}\n"


def test_every_command_has_a_description():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [name for name, p in sub.choices.items() if not p.description]
    assert sub.choices and not missing, missing


def test_plan_help_names_the_readme_presets(capsys):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### plan\n") : readme.index("### demo\n")]
    used = set(re.findall(r"qwen-audio-jax plan --model (\S+)", section))
    assert main(["plan", "--help"]) == 0
    listed = re.search(r"preset name \(([^)]*)\)", " ".join(capsys.readouterr().out.split())).group(1)
    from qwen_audio_jax.config import PRESETS

    assert used and used <= set(listed.split(", ")) == set(PRESETS)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o077, 0o700)], ids=["022", "077"])
def test_output_dirs_follow_the_umask(tmp_path, umask, mode):
    """export-hf, convert and a training run's output dirs (output_dir, its checkpoints and model) get the mode
    the umask gives any new folder, as `mkdir` would: atomic writes make them as 0700 temps first."""
    hf, jax_dir, run = tmp_path / "hf", tmp_path / "jax", tmp_path / "run"
    sample = REPO / "qwen_audio_jax" / "assets" / "sample_data" / "sft.jsonl"
    train = ["--config", str(REPO / "configs" / "sft_sample.yaml"), "--no-progress", f"model={DEMO_MODEL}"]
    train += [f"data.train={sample}", f"output_dir={run}", "train.steps=1", "checkpoint.every=1"]
    old = os.umask(umask)
    try:
        assert main(["export-hf", str(DEMO_MODEL), str(hf), "--no-progress"]) == 0
        assert main(["convert", str(hf), str(jax_dir), "--no-progress"]) == 0
        assert main(["sft", *train]) == 0
    finally:
        os.umask(old)
    assert (run / "model" / "config.json").is_file() and (run / "checkpoints").is_dir()
    for out in (hf, jax_dir, run):
        dirs = [out, *(p for p in out.rglob("*") if p.is_dir())]
        wrong = {
            str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
            for p in dirs
            if p.stat().st_mode & 0o777 != mode
        }
        assert not wrong, wrong
    for written in (hf / "config.json", jax_dir / "config.json", run / "model" / "config.json", run / MARKER):
        assert written.stat().st_mode & 0o777 == mode & 0o666, written


def test_learning_rate_error_names_the_values():
    from qwen_audio_jax.training.run_config import load_run_config

    with pytest.raises(ConfigError) as e:
        load_run_config(REPO / "configs" / "sft_tiny.yaml", ["optim.learning_rate=1e-4"])
    message = str(e.value)
    assert "min_learning_rate=0.0003" in message and "learning_rate=0.0001" in message
    assert "optim.min_learning_rate=1e-05" in message  # and how to fix it
    load_run_config(REPO / "configs" / "sft_tiny.yaml", ["optim.learning_rate=1e-4", "optim.min_learning_rate=1e-05"])
