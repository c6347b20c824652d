"""Two local processes x 4 CPU devices (jax.distributed + gloo) give the single-process results: generate and
score over split request files (one merged result file each) and DPO steps with a checkpoint save and restore."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from qwen_audio_jax import api
from qwen_audio_jax.generation.engine import EngineOptions
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.jobs.driver import run_file
from qwen_audio_jax.jobs.generate import GenerateJob
from qwen_audio_jax.jobs.score import ScoreJob
from qwen_audio_jax.training.loop import train
from qwen_audio_jax.training.run import TrainingRun
from qwen_audio_jax.training.run_config import load_run_config
from tests._model_dirs import build_tiny_model_dir
from tests._paths import REPO
from tests._requests import synth_clip
from tests._synthetic_prefs import write_preference_set
from tests.multihost_worker import LORA

pytestmark = pytest.mark.mesh
TIMEOUT_S = 900
CONFIG = str(REPO / "configs" / "dpo_tiny.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import soundfile as sf

    root = tmp_path_factory.mktemp("multihost")
    build_tiny_model_dir(root / "model")
    write_preference_set(root, 16, seed=5)
    lines = []
    for i in range(11):  # not a multiple of the batch: the processes get different numbers of batches
        content = [{"type": "text", "text": f"Request {i}: " + "word " * (i * 7)}]
        if i % 3:
            sf.write(root / f"clip{i}.wav", synth_clip(0.5 + 0.4 * i, seed=i), 16000)
            content.insert(0, {"type": "audio", "audio": str(root / f"clip{i}.wav")})
        lines.append({"id": f"q{i}", "messages": [{"role": "user", "content": content}]})
    lines.append({"id": "bad", "messages": [{"role": "user", "content": [{"type": "audio", "audio": "nope.wav"}]}]})
    (root / "requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    # 7 score requests (one with two completions, one failing): the processes get different row counts.
    scores = [{**x, "completion": f"Answer {i}."} for i, x in enumerate(lines[:5])]
    scores += [{**lines[5], "completions": ["Yes.", "No, not at all."]}, {**lines[-1], "completion": "x"}]
    (root / "score_requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in scores))
    (root / "spec.json").write_text(json.dumps({"max_new_tokens": 12, "config": CONFIG}))
    return root


@pytest.fixture(scope="module")
def multihost_run(work):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    # Output goes to files, not pipes: a worker filling an unread 64 KiB pipe would block and look hung.
    logs = [(open(work / f"worker{pid}.out", "w+"), open(work / f"worker{pid}.err", "w+")) for pid in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.multihost_worker", str(pid), str(port), str(work)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        for pid, (out, err) in enumerate(logs)
    ]
    deadline, hung = time.time() + TIMEOUT_S, False
    while any(p.poll() is None for p in procs):
        if time.time() > deadline:
            hung = True
            break
        if any(p.poll() not in (None, 0) for p in procs):  # one crashed: the other would wait forever
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    outputs = []
    for out, err in logs:
        out.seek(0), err.seek(0)
        outputs.append((out.read(), err.read()))
        out.close(), err.close()
    for pid, (p, (out, err)) in enumerate(zip(procs, outputs)):
        assert not hung, f"multi-host workers hung for {TIMEOUT_S} s; worker {pid} stderr:\n{err[-4000:]}"
        assert p.returncode == 0 and f"WORKER {pid} OK" in out, f"worker {pid} failed:\n{err[-4000:]}"
    return work


def test_generate_split_across_processes_equals_single_process(multihost_run):
    work = multihost_run
    multi = [json.loads(x) for x in (work / "multi_results.jsonl").read_text().splitlines()]
    assert not list(work.glob("multi_results.jsonl.part-*")), "part files must be merged and removed"
    model = api.load(work / "model")
    run_file(
        GenerateJob(model, GenerationOptions(max_new_tokens=12), EngineOptions(batch_size=4)),
        work / "requests.jsonl",
        work / "single_results.jsonl",
        overwrite=True,
        progress=False,
    )
    single = [json.loads(x) for x in (work / "single_results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in multi) == sorted(r["id"] for r in single)  # every request exactly once
    want = {r["id"]: (r["token_ids"], r["error"] is None) for r in single}
    assert {r["id"]: (r["token_ids"], r["error"] is None) for r in multi} == want
    assert not want["bad"][1]


def test_score_split_across_processes_equals_single_process(multihost_run):
    work = multihost_run
    multi = [json.loads(x) for x in (work / "multi_scores.jsonl").read_text().splitlines()]
    assert not list(work.glob("multi_scores.jsonl.part-*"))
    run_file(
        ScoreJob(api.load(work / "model"), batch_size=4),
        work / "score_requests.jsonl",
        work / "single_scores.jsonl",
        overwrite=True,
        progress=False,
    )
    single = {r["id"]: r for r in map(json.loads, (work / "single_scores.jsonl").read_text().splitlines())}
    assert sorted(r["id"] for r in multi) == sorted(single)
    for r in multi:
        want = single[r["id"]]
        assert (r["error"] is None) == (want["error"] is None) and r["num_tokens"] == want["num_tokens"]
        if r["error"] is None:
            assert r["logprob"] == pytest.approx(want["logprob"], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "qlora"])
def test_dpo_steps_with_checkpoint_restore_equal_single_process(multihost_run, lora):
    work = multihost_run
    name = "lora_run" if lora else "run"
    overrides = [
        f"model={work / 'model'}",
        f"data.train={work / 'prefs.jsonl'}",
        f"output_dir={work / f'single_{name}'}",
        "checkpoint.every=2",
        "train.num_threads=1",
        *(LORA if lora else []),
    ]
    train(TrainingRun.build(load_run_config(CONFIG, overrides + ["train.steps=3"])), progress=False)
    train(TrainingRun.build(load_run_config(CONFIG, overrides + ["train.steps=4"])), progress=False)
    read = lambda d: [json.loads(x) for x in (work / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    multi, single = read(f"multi_{name}"), read(f"single_{name}")
    assert [m["step"] for m in multi] == [1, 2, 3, 4] == [m["step"] for m in single]
    for a, b in zip(multi, single):
        for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5), (a["step"], k)
    if lora:  # the adapters only, as PEFT reads them
        assert sorted(p.name for p in (work / "multi_lora_run" / "model").iterdir() if not p.name.startswith(".")) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
    else:
        assert (work / "multi_run" / "model" / "params").is_dir()
