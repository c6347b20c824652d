"""LoRA / QLoRA training on the tiny model: only adapters train and are saved, DPO's reference is the base with
the adapters switched off (equal to a frozen copy's), runs learn and resume bit-identically after SIGKILL, and
the result is a PEFT adapter dir the inference commands take. (PEFT parity of the adapted model and of the
exported adapters: tests/test_lora_peft.py; meshes and two processes: tests/test_mesh.py, test_multihost.py.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from qwen_audio_jax import api
from qwen_audio_jax.cli.main import main
from qwen_audio_jax.training.checkpointing import TrainCheckpoints, abstract_like
from qwen_audio_jax.training.loop import train
from qwen_audio_jax.training.run import TrainingRun
from qwen_audio_jax.training.run_config import load_run_config
from tests._model_dirs import build_tiny_model_dir
from tests._paths import REPO
from tests._sigkill import kill_when
from tests._synthetic_prefs import write_preference_set

DPO = str(REPO / "configs" / "dpo_tiny.yaml")
SFT = str(REPO / "configs" / "sft_tiny.yaml")
# Adapters start at zero effect, so they need a larger rate than full training to move in few steps.
LORA = ["lora.rank=8", "lora.alpha=16", "optim.learning_rate=1e-2", "optim.min_learning_rate=1e-3"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    build_tiny_model_dir(root / "model")
    write_preference_set(root / "train", 64, seed=0)
    write_preference_set(root / "heldout", 32, seed=1)
    write_preference_set(root / "sft_train", 64, seed=2, preference=False)
    return root


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _overrides(work, out, data="train", *more):
    name = "prefs.jsonl" if data != "sft_train" else "sft.jsonl"
    return [f"model={work / 'model'}", f"data.train={work / data / name}", f"output_dir={out}", *LORA, *more]


def _heldout_logps(work, model_dir) -> np.ndarray:
    model = api.load(model_dir)
    reqs = []
    for r in _records(work / "heldout" / "prefs.jsonl"):
        msgs = json.loads(json.dumps(r["messages"]).replace('"s1_', f'"{work / "heldout"}/s1_'))
        reqs.append(
            {"id": r["id"], "messages": msgs, "completions": [r["chosen"] + "<|im_end|>", r["rejected"] + "<|im_end|>"]}
        )
    return np.asarray([x["logprob"] for x in api.score(model, reqs, batch_size=8)])


def test_lora_dpo_trains_adapters_only_and_learns(work):
    out = work / "dpo-lora"
    run = TrainingRun.build(
        load_run_config(DPO, _overrides(work, out, "train", "lora.base_dtype=float32", "train.steps=30"))
    )
    summary = train(run, progress=False, log=lambda m: None)
    # One train-step program per batch-shape bucket, as for full training.
    assert run.compiled_programs() <= len(run.shapes_seen)
    metrics = _records(out / "metrics.jsonl")
    assert metrics[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # fresh adapters change nothing
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.1
    assert metrics[-1]["rewards/margins"] > 0.2 and metrics[-1]["rewards/accuracies"] >= 0.9
    # The checkpoints hold the adapters and their optimizer state only: no base weight is in them.
    ckpt = TrainCheckpoints(out / "checkpoints", every=10, keep=3)
    state, _ = ckpt.restore(ckpt.latest_step(), abstract_like(run.initial_state()))
    ckpt.close()
    leaves = traverse_util.flatten_dict(state.params)
    assert leaves and all(k[-1] in ("lora_a", "lora_b") for k in leaves)
    targets = {k[-2] for k in leaves}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    base_bytes = sum(f.stat().st_size for f in (work / "model" / "params").rglob("*") if f.is_file())
    ckpt_bytes = sum(f.stat().st_size for f in (out / "checkpoints").rglob("*") if f.is_file()) / 3
    assert ckpt_bytes < base_bytes / 10, (ckpt_bytes, base_bytes)
    # The result is a PEFT adapter dir; as --model it runs on its base, and its implicit reward ranks
    # held-out chosen answers first.
    final = Path(summary["final_model"])
    assert sorted(p.name for p in final.iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    policy, reference = _heldout_logps(work, final), _heldout_logps(work, work / "model")
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    assert (margin > 0).mean() >= 0.8, margin


def test_adapter_off_reference_equals_a_frozen_copy(work, tmp_path):
    """DPO with the adapters switched off as the reference gives, step for step, the numbers of DPO against a
    separate frozen copy of the base loaded from its own dir (what full DPO holds in memory)."""
    copy = tmp_path / "base-copy"
    shutil.copytree(work / "model", copy)
    runs = {}
    for name, extra in (("off", []), ("copy", [f"reference.model={copy}"])):
        out = tmp_path / name
        cfg = load_run_config(DPO, _overrides(work, out, "train", "lora.base_dtype=float32", "train.steps=4", *extra))
        train(TrainingRun.build(cfg, log=lambda m: None), progress=False, log=lambda m: None)
        runs[name] = [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in _records(out / "metrics.jsonl")]
    assert runs["off"] == runs["copy"]
    assert runs["off"][-1]["rewards/margins"] != 0.0  # the adapters moved: the reference is not the policy


def test_qlora_resumes_bit_identically_after_sigkill(work, tmp_path):
    """int8 base (QLoRA) with LoRA dropout: SIGKILL mid-run, then the same command: every step's metrics equal
    an uninterrupted run's; and it learns."""
    args = [sys.executable, "-m", "qwen_audio_jax.cli.main", "dpo", "--config", DPO, "--no-progress"]
    args += _overrides(work, "{out}", "train", "lora.base_dtype=int8", "lora.dropout=0.1", "train.steps=12")
    args += ["checkpoint.every=3", "checkpoint.keep=5"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    full, part = tmp_path / "full", tmp_path / "part"
    with_out = lambda out: [a.replace("{out}", str(out)) for a in args]  # noqa: E731
    subprocess.run(with_out(full), check=True, env=env, cwd=REPO, capture_output=True)
    metrics = part / "metrics.jsonl"
    ready = lambda: (  # noqa: E731
        metrics.exists() and len(metrics.read_text().splitlines()) >= 7 and (part / "checkpoints" / "6").exists()
    )
    kill_when(with_out(part), ready, env=env, cwd=REPO)
    assert len(metrics.read_text().splitlines()) < 12, "the kill must land before the run ends"
    subprocess.run(with_out(part), check=True, env=env, cwd=REPO, capture_output=True)
    drop = ("tokens_per_s",)
    got = [{k: v for k, v in m.items() if k not in drop} for m in _records(metrics)]
    want = [{k: v for k, v in m.items() if k not in drop} for m in _records(full / "metrics.jsonl")]
    assert [m["step"] for m in got] == list(range(1, 13)) and got == want
    assert want[-1]["loss"] < want[0]["loss"] - 0.05 and want[-1]["rewards/margins"] > want[0]["rewards/margins"]


def test_lora_sft_learns(work, tmp_path):
    """LoRA SFT over a bf16 base: the loss falls (the tiny random model's frozen lm_head and final norm bound how
    far) and the adapted model gives the training answers higher log-probs than the base."""
    out = tmp_path / "sft"
    args = ["sft", "--config", SFT, "--no-progress", *_overrides(work, out, "sft_train", "train.steps=40")]
    assert main(args) == 0
    metrics = _records(out / "metrics.jsonl")
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5, (metrics[0]["loss"], metrics[-1]["loss"])
    reqs = []
    for r in _records(work / "sft_train" / "sft.jsonl")[:16]:
        msgs = json.loads(json.dumps(r["messages"][:-1]).replace('"s2_', f'"{work / "sft_train"}/s2_'))
        reqs.append({"id": r["id"], "messages": msgs, "completion": r["messages"][-1]["content"] + "<|im_end|>"})
    tuned = [x["logprob"] for x in api.score(api.load(out / "model"), reqs, batch_size=8)]
    base = [x["logprob"] for x in api.score(api.load(work / "model"), reqs, batch_size=8)]
    assert all(t > b + 1.0 for t, b in zip(tuned, base)), (tuned, base)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("lora.targets=[c_attn]", "not linear layers of Qwen2-Audio"),
        ("lora.base_dtype=int4", "lora.base_dtype='int4' must be one of float32, bfloat16, int8"),
        ("lora.dropout=1.0", "lora.dropout=1 must be in [0, 1)"),
    ],
)
def test_lora_config_errors_are_one_line(work, tmp_path, capsys, override, words):
    assert main(["dpo", "--config", DPO, "--no-progress", *_overrides(work, tmp_path / "x", "train", override)]) != 0
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
