"""One of two local processes (4 CPU devices each) joined by jax.distributed with gloo collectives: restore a
model dir into a sharded mesh, generate and score over request files split across processes, then 3 DPO steps
with a checkpoint and a resumed 4th step.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.multihost_worker PID PORT WORKDIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

LORA = ["lora.rank=4", "lora.base_dtype=int8", "optim.learning_rate=1e-2"]


def main(pid: int, port: int, work: Path) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4

    from jax.experimental import multihost_utils

    from qwen_audio_jax import api
    from qwen_audio_jax.generation.engine import EngineOptions
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.jobs.driver import run_file
    from qwen_audio_jax.jobs.generate import GenerateJob
    from qwen_audio_jax.jobs.score import ScoreJob
    from qwen_audio_jax.training.loop import train
    from qwen_audio_jax.training.run import TrainingRun
    from qwen_audio_jax.training.run_config import load_run_config

    spec = json.loads((work / "spec.json").read_text())
    model = api.load(work / "model", mesh="data=2,fsdp=2,tensor=2")
    job = GenerateJob(model, GenerationOptions(max_new_tokens=spec["max_new_tokens"]), EngineOptions(batch_size=4))
    run_file(job, work / "requests.jsonl", work / "multi_results.jsonl", overwrite=True, progress=False)
    run_file(
        ScoreJob(model, batch_size=4),
        work / "score_requests.jsonl",
        work / "multi_scores.jsonl",
        overwrite=True,
        progress=False,
    )

    overrides = [
        f"model={work / 'model'}",
        f"data.train={work / 'prefs.jsonl'}",
        f"output_dir={work / 'multi_run'}",
        "mesh=data=2,fsdp=2,tensor=2",
        "checkpoint.every=2",
        "train.num_threads=1",
    ]
    # The two processes share the test session's 2 cores: a starved one can fall minutes behind after the
    # score phase, and Orbax's restore barrier gives up after 300 s. Meet here first (a device collective, no
    # such limit), so the barriers inside train() only see the skew of training's own setup.
    multihost_utils.sync_global_devices("multihost_worker: before training")
    train(TrainingRun.build(load_run_config(spec["config"], overrides + ["train.steps=3"])), progress=False)
    # A second run of the same command resumes from the step-3 checkpoint and takes one more step.
    train(TrainingRun.build(load_run_config(spec["config"], overrides + ["train.steps=4"])), progress=False)
    # LoRA (QLoRA's int8 base): adapters sharded like their kernels, the base quantized on the devices.
    lora = [o.replace("multi_run", "multi_lora_run") for o in overrides] + LORA
    train(TrainingRun.build(load_run_config(spec["config"], lora + ["train.steps=3"])), progress=False)
    train(TrainingRun.build(load_run_config(spec["config"], lora + ["train.steps=4"])), progress=False)
    print(f"WORKER {pid} OK", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
