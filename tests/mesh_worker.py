"""Runs in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller): the same programs on one
device and on several meshes, printing one JSON document the test compares.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.mesh_worker data=8 fsdp=8 ...
"""

from __future__ import annotations

import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def main(specs: list[str]) -> dict:
    from qwen_audio_jax.api import LoadedModel
    from qwen_audio_jax.bundled import write_tokenizer_dir
    from qwen_audio_jax.config import tiny
    from qwen_audio_jax.generation.engine import Engine
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.jobs.driver import run_list
    from qwen_audio_jax.jobs.score import ScoreJob
    from qwen_audio_jax.model.axes import LAYERS
    from qwen_audio_jax.model.params import init_params, logical_axes
    from qwen_audio_jax.sharding.mesh import make_mesh
    from qwen_audio_jax.sharding.placement import Placement
    from qwen_audio_jax.text.processor import Processor
    from qwen_audio_jax.text.tokenizer import Qwen2AudioTokenizer
    from tests._requests import varied_requests

    assert jax.device_count() == 8, jax.devices()
    processor = Processor(Qwen2AudioTokenizer.from_dir(write_tokenizer_dir(tempfile.mkdtemp())))
    prepared = processor.prepare_many(varied_requests())
    score_requests = [{**r, "completion": "A short answer, then a longer one."} for r in varied_requests()[:4]]
    config = tiny()
    params = init_params(config, jax.random.PRNGKey(3))
    opts = GenerationOptions(max_new_tokens=12)

    def run(placement):
        """6 requests on 6 slots (rounded up to the mesh's batch axes: padded slots and prefill rows), then the
        first three again as a batch that divides nothing, and scores."""
        engine = Engine(config, params, batch_size=6, placement=placement)
        tokens = [o.token_ids for o in engine.generate(prepared, opts)]
        odd = [o.token_ids for o in engine.generate(prepared[:3], opts)]
        model = LoadedModel(config, engine.params, processor, jnp.float32, None, placement)
        scores = [r["logprob"] for r in run_list(ScoreJob(model, batch_size=4), score_requests)]
        return engine, tokens, odd, scores

    from pathlib import Path

    from qwen_audio_jax.training.loop import train as train_run
    from qwen_audio_jax.training.run import TrainingRun
    from qwen_audio_jax.training.run_config import load_run_config
    from tests._model_dirs import build_tiny_model_dir
    from tests._paths import REPO
    from tests._synthetic_prefs import write_preference_set

    work = Path(tempfile.mkdtemp())
    build_tiny_model_dir(work / "model")
    write_preference_set(work, 12, seed=7)

    def train(mesh_spec, lora=False):
        """Two DPO steps (batch of 6 pairs: padded on meshes whose batch axes do not divide it); `lora`: LoRA
        adapters over a frozen fp32 base."""
        out = work / f"run-{mesh_spec or 'none'}{'-lora' if lora else ''}"
        overrides = [
            f"model={work / 'model'}",
            f"data.train={work / 'prefs.jsonl'}",
            f"output_dir={out}",
            "train.steps=2",
            "train.batch_size=6",
            "train.num_threads=1",
            "checkpoint.every=100",
        ]
        if lora:
            overrides += ["lora.rank=4", "lora.base_dtype=float32", "optim.learning_rate=1e-2"]
        if mesh_spec:
            overrides.append(f"mesh={mesh_spec}")
        run_ = TrainingRun.build(
            load_run_config(str(REPO / "configs" / "dpo_tiny.yaml"), overrides), log=lambda m: None
        )
        train_run(run_, progress=False, log=lambda m: None)
        return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    _, ref_tokens, ref_odd, ref_scores = run(Placement.create(None))
    out = {
        "reference": {
            "tokens": ref_tokens,
            "odd_batch": ref_odd,
            "scores": ref_scores,
            "dpo": train(None),
            "dpo_lora": train(None, True),
        },
        "meshes": {},
    }
    names = traverse_util.flatten_dict(logical_axes(config), sep="/")
    for spec in specs:
        mesh = make_mesh(spec)
        engine, tokens, odd, scores = run(Placement(mesh))
        flat = traverse_util.flatten_dict(engine.params, sep="/")
        actual = {k: str(v.sharding.spec) for k, v in flat.items()}
        out["meshes"][spec] = {
            "tokens": tokens,
            "odd_batch": odd,
            "scores": scores,
            "batch_size": engine.batch_size,
            "dpo": train(spec),
            "dpo_lora": train(spec, True),
            "actual": actual,  # read back from the placed arrays (tests/test_mesh.py has the hand-written specs)
            # weight matrices (2+ dims besides the stacked layer axis) that ended up on every device whole
            "replicated_matrices": sorted(
                k for k, v in flat.items() if v.ndim - (names[k][0] == LAYERS) >= 2 and v.sharding.is_fully_replicated
            ),
        }
    return out


if __name__ == "__main__":
    np.set_printoptions(precision=8)
    print("MESH_RESULT " + json.dumps(main(sys.argv[1:])))
