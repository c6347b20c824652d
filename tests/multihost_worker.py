"""One of two local processes (4 CPU devices each) joined by jax.distributed with gloo collectives: restore a
model dir into a sharded mesh, generate over a request file split across processes, then 3 DPO steps with a
checkpoint and a resumed 4th step.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.multihost_worker PID PORT WORKDIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax


def main(pid: int, port: int, work: Path) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4

    from qwen_audio_jax import api
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.jobs.generate import GenerateJob
    from qwen_audio_jax.sharding.mesh import make_mesh
    from qwen_audio_jax.training.run_config import load_run_config
    from qwen_audio_jax.training.trainer import Trainer

    spec = json.loads((work / "spec.json").read_text())
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    model = api.load(work / "model", mesh=mesh)
    job = GenerateJob(model, GenerationOptions(max_new_tokens=spec["max_new_tokens"]), batch_size=4)
    job.run_file(work / "requests.jsonl", work / "multi_results.jsonl", overwrite=True, progress=False)

    overrides = [f"model={work / 'model'}", f"data.train={work / 'prefs.jsonl'}", f"output_dir={work / 'multi_run'}",
                 "mesh=data=2,fsdp=2,tensor=2", "checkpoint.every=2", "train.num_threads=1"]  # fmt: skip
    Trainer(load_run_config(spec["config"], overrides + ["train.steps=3"]), progress=False).run()
    # A second run of the same command resumes from the step-3 checkpoint and takes one more step.
    Trainer(load_run_config(spec["config"], overrides + ["train.steps=4"]), progress=False).run()
    print(f"WORKER {pid} OK", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
