"""DPO / SFT runs end to end on the tiny model: it learns, resumes bit-identically after SIGKILL, and writes a
model dir the other commands take. (A non-finite step: tests/test_reliability_numbers.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_audio_jax import api
from qwen_audio_jax.cli.main import main
from qwen_audio_jax.generation.options import GenerationOptions
from tests._model_dirs import build_tiny_model_dir
from tests._paths import REPO
from tests._sigkill import kill_when
from tests._synthetic_prefs import SOUNDS, write_preference_set

CONFIG = str(REPO / "configs" / "dpo_tiny.yaml")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    build_tiny_model_dir(root / "model")
    write_preference_set(root / "train", 64, seed=0)
    write_preference_set(root / "heldout", 32, seed=1)
    write_preference_set(root / "sft_train", 64, seed=2, preference=False)
    write_preference_set(root / "sft_heldout", 16, seed=3, preference=False)
    return root


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _dpo(work, out, *overrides):
    return main(
        [
            "dpo",
            "--config",
            CONFIG,
            "--no-progress",
            f"model={work / 'model'}",
            f"data.train={work / 'train' / 'prefs.jsonl'}",
            f"output_dir={out}",
            *overrides,
        ]
    )


def test_dpo_learns_on_heldout_pairs(work):
    out = work / "dpo-run"
    assert _dpo(work, out) == 0
    metrics = _records(out / "metrics.jsonl")
    assert len(metrics) == 60 and metrics[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)
    for name in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "grad_norm",
        "learning_rate",
        "tokens_per_s",
    ):
        assert name in metrics[-1]
    assert (out / "tensorboard").is_dir() and (out / "data_report.json").exists()
    # Held-out accuracy: the trained policy's implicit reward ranks chosen over rejected.
    heldout = _records(work / "heldout" / "prefs.jsonl")

    def logps(model_dir):
        model = api.load(model_dir)
        reqs = []
        for r in heldout:
            msgs = json.loads(json.dumps(r["messages"]).replace('"s1_', f'"{work / "heldout"}/s1_'))
            reqs.append(
                {
                    "id": r["id"],
                    "messages": msgs,
                    "completions": [r["chosen"] + "<|im_end|>", r["rejected"] + "<|im_end|>"],
                }
            )
        return np.asarray([x["logprob"] for x in api.score(model, reqs, batch_size=8)])

    policy, reference = logps(out / "model"), logps(work / "model")
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    assert (margin > 0).mean() >= 0.95, margin


def test_sft_learns_exact_answers(work):
    out = work / "sft-run"
    assert (
        main(
            [
                "sft",
                "--config",
                str(REPO / "configs" / "sft_tiny.yaml"),
                "--no-progress",
                f"model={work / 'model'}",
                f"data.train={work / 'sft_train' / 'sft.jsonl'}",
                f"output_dir={out}",
            ]
        )
        == 0
    )
    model = api.load(out / "model")
    heldout = _records(work / "sft_heldout" / "sft.jsonl")
    requests = []
    for r in heldout:
        msgs = json.loads(json.dumps(r["messages"][:-1]).replace('"s3_', f'"{work / "sft_heldout"}/s3_'))
        requests.append({"id": r["id"], "messages": msgs})
    results = api.generate(model, requests, GenerationOptions(max_new_tokens=8), batch_size=8)
    answers = [r["messages"][-1]["content"] for r in heldout]
    exact = np.mean([res["text"] == want for res, want in zip(results, answers)])
    assert exact >= 0.95, [(r["text"], a) for r, a in zip(results, answers)]
    assert all(res["finish_reason"] == "stop" for res in results)  # it learned to end the turn
    assert set(answers) == set(SOUNDS)


def test_resume_after_sigkill_is_bit_identical(work, tmp_path):
    """SIGKILL mid-run, then the same command: every step's metrics equal an uninterrupted run's (SpecAugment on)."""
    args = [
        sys.executable,
        "-m",
        "qwen_audio_jax.cli.main",
        "dpo",
        "--config",
        CONFIG,
        "--no-progress",
        f"model={work / 'model'}",
        f"data.train={work / 'train' / 'prefs.jsonl'}",
        "train.steps=12",
        "checkpoint.every=3",
        "checkpoint.keep=5",
        "augment.spec_augment=true",  # the masks come from the checkpointed RNG: a resumed run draws the same
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run(args + [f"output_dir={full}"], check=True, env=env, cwd=REPO, capture_output=True)
    metrics = part / "metrics.jsonl"
    ready = lambda: (  # noqa: E731
        metrics.exists() and len(metrics.read_text().splitlines()) >= 8 and (part / "checkpoints" / "6").exists()
    )
    kill_when(args + [f"output_dir={part}"], ready, env=env, cwd=REPO)
    done = len(metrics.read_text().splitlines())
    assert done < 12, "the kill must land before the run ends"
    subprocess.run(args + [f"output_dir={part}"], check=True, env=env, cwd=REPO, capture_output=True)
    got, want = _records(metrics), _records(full / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(1, 13))
    drop = ("tokens_per_s",)  # wall-clock
    assert [{k: v for k, v in m.items() if k not in drop} for m in got] == [
        {k: v for k, v in m.items() if k not in drop} for m in want
    ]


def test_train_step_compiles_once_per_bucket_and_exports(work, tmp_path):
    """Bounded recompilation: one train-step program per batch-shape bucket seen; the final model dir goes back
    to Hugging Face format."""
    from qwen_audio_jax.training.loop import train
    from qwen_audio_jax.training.run import TrainingRun
    from qwen_audio_jax.training.run_config import load_run_config

    cfg = load_run_config(
        CONFIG,
        [
            f"model={work / 'model'}",
            f"data.train={work / 'train' / 'prefs.jsonl'}",
            f"output_dir={tmp_path / 'run'}",
            "train.steps=12",
            "train.batch_size=4",
        ],
    )
    run = TrainingRun.build(cfg)
    train(run, progress=False)
    assert 1 <= run.compiled_programs() == len(run.shapes_seen) < 12
    assert main(["export-hf", str(tmp_path / "run" / "model"), str(tmp_path / "hf"), "--no-progress"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "config.json").exists()


def test_precomputed_reference_equals_model_reference(work, tmp_path):
    a, b = tmp_path / "model-ref", tmp_path / "pre-ref"
    assert _dpo(work, a, "train.steps=3") == 0
    assert (
        main(
            [
                "dpo",
                "--config",
                CONFIG,
                "--precompute-ref",
                "--no-progress",
                f"model={work / 'model'}",
                f"data.train={work / 'train' / 'prefs.jsonl'}",
                f"output_dir={b}",
            ]
        )
        == 0
    )
    assert (b / "reference_logps.json").exists()
    assert _dpo(work, b, "train.steps=3", "reference.mode=precomputed") == 0
    for x, y in zip(_records(a / "metrics.jsonl"), _records(b / "metrics.jsonl")):
        for k in ("loss", "rewards/margins", "logps/chosen"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-5)


def test_config_errors_are_one_line(work, tmp_path, capsys):
    assert _dpo(work, tmp_path / "x", "train.nonsense=3") == 2
    assert "unknown key" in capsys.readouterr().err
    assert _dpo(work, tmp_path / "x", "loss.types=[dpo_magic]") == 2
    assert "unknown loss type" in capsys.readouterr().err
