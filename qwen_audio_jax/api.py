"""Python entry points: `load` a model dir, then `generate` or `score` lists of requests.

    import qwen_audio_jax as qaj
    model = qaj.load("qwen2-audio-7b-instruct-jax")
    [out] = qaj.generate(model, [{"id": "1", "messages": [{"role": "user", "content": [
        {"type": "audio", "audio": "clip.wav"}, {"type": "text", "text": "What is this sound?"}]}]}])
    print(out["text"])
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from qwen_audio_jax.checkpoint import model_dir as md
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.generation.engine import Engine, GenerationOptions
from qwen_audio_jax.model.params import abstract_params
from qwen_audio_jax.sharding import axes as ax
from qwen_audio_jax.sharding import mesh as shd
from qwen_audio_jax.text.processor import Processor


@dataclasses.dataclass
class LoadedModel:
    config: ModelConfig
    params: Any  # nested dict of jax arrays
    processor: Processor
    dtype: Any  # compute dtype
    model_dir: Path
    mesh: Any = None  # jax.sharding.Mesh the params are sharded over (None: one device)
    rules: Any = ax.INFERENCE_RULES

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def default_dtype():
    """bf16 compute on accelerators, fp32 on CPU (DESIGN decision 7)."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def load(model_dir: str | Path, *, dtype=None, mesh=None, rules=ax.INFERENCE_RULES,
         long_audio: str = "truncate") -> LoadedModel:  # fmt: skip
    """Loads config, params (cast to the compute dtype while restoring) and the processor of a model dir.

    mesh: a jax.sharding.Mesh (see `qwen_audio_jax.sharding.mesh.make_mesh`); params are restored straight
    into their shardings under `rules`, so each host reads only its shards and none holds the whole model.
    """
    model_dir = Path(model_dir)
    config, _ = md.read_model_dir_config(model_dir)
    dtype = dtype or default_dtype()
    abstract = abstract_params(config)
    shardings = None if mesh is None else shd.param_shardings(mesh, config, rules)
    if shardings is None:
        target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), abstract)
    else:
        target = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype, sharding=s), abstract,
                                        shardings)  # fmt: skip
    params = md.load_params(model_dir, _with_default_sharding(target))
    processor = Processor.from_model_dir(model_dir, long_audio=long_audio)
    return LoadedModel(config, params, processor, dtype, model_dir, mesh, rules)


def _with_default_sharding(target):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(
        lambda x: x if x.sharding is not None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target
    )


def generate(
    model: LoadedModel,
    requests: Sequence[dict],
    options: GenerationOptions = GenerationOptions(),
    *,
    batch_size: int = 8,
    engine: Engine | None = None,
) -> list[dict]:
    """One result dict per request, in order: {"id", "text", "token_ids", "finish_reason", "error"}."""
    from qwen_audio_jax.jobs.generate import GenerateJob

    job = GenerateJob(model, options, batch_size=batch_size, engine=engine)
    return job.run_all(list(requests))


def score(model: LoadedModel, requests: Sequence[dict], *, batch_size: int = 8) -> list[dict]:
    """Summed log-prob of each request's "completion" given its prompt: {"id", "logprob", "num_tokens", "error"}."""
    from qwen_audio_jax.jobs.score import ScoreJob

    return ScoreJob(model, batch_size=batch_size).run_all(list(requests))
