"""Python entry points: `load` a model dir, then `generate` or `score` lists of requests.

import qwen_audio_jax as qaj
model = qaj.load("qwen2-audio-7b-instruct-jax")
[out] = qaj.generate(model, [{"id": "1", "messages": [{"role": "user", "content": [
    {"type": "audio", "audio": "clip.wav"}, {"type": "text", "text": "What is this sound?"}]}]}])
print(out["text"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from qwen_audio_jax.checkpoint.model_dir import load_params, read_model_dir_config
from qwen_audio_jax.choices import (
    DEFAULT_ATTENTION,
    DEFAULT_BATCH_SIZE,
    DEFAULT_LONG_AUDIO,
    DEFAULT_QUANTIZE,
    QUANTIZE_MODES,
)
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.conversion.peft import adapter_base, check_adapter_dir, is_adapter_only, read_adapter
from qwen_audio_jax.errors import CheckpointError
from qwen_audio_jax.generation.engine import Engine, EngineOptions
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.model.lora import merge_deltas
from qwen_audio_jax.model.params import abstract_params
from qwen_audio_jax.model.quant import quantize_params
from qwen_audio_jax.sharding.placement import Placement
from qwen_audio_jax.text.processor import Processor


@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: its config, params placed on `placement`, and its processor."""

    config: ModelConfig
    params: Any  # nested dict of jax arrays, sharded over placement.mesh
    processor: Processor
    dtype: Any  # compute dtype
    model_dir: Path
    placement: Placement
    attention: str = DEFAULT_ATTENTION  # choices.ATTENTION_IMPLEMENTATIONS (model/attention.py)
    quantized: bool = False  # int8 decoder kernels and lm_head (model/quant.py)

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def default_dtype():
    """bf16 compute on accelerators, fp32 on CPU (docs/decisions.md §7)."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def load(
    model_dir: str | Path,
    *,
    dtype=None,
    placement: Placement | None = None,
    mesh: str | None = None,
    long_audio: str = DEFAULT_LONG_AUDIO,
    attention: str = DEFAULT_ATTENTION,
    quantize: str = DEFAULT_QUANTIZE,
    adapter: str | Path | None = None,
) -> LoadedModel:
    """Loads config, params (cast to the compute dtype while restoring) and the processor of a model dir.

    placement (or a `mesh` spec string such as "data=2,fsdp=4"; default one device): params are restored
    straight into their shardings, so each host reads only its shards and none holds the whole model.
    quantize "int8": the decoder's linear layers and the lm_head become int8 with per-output-channel scales
    (model/quant.py), converted on the devices right after loading.
    adapter: a LoRA adapter dir (PEFT's format: one written by PEFT, LLaMA-Factory, ms-swift or a LoRA training
    run here) merged into the weights at load (before any quantization), so inference runs at the base model's
    speed. A LoRA run's `OUTPUT/model` may also be passed as `model_dir`: its base is the model it was trained on.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    model_dir, adapter = resolve_adapter(model_dir, adapter)
    config, _ = read_model_dir_config(model_dir)
    dtype = dtype or default_dtype()
    placement = placement or Placement.create(mesh)
    target = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype, sharding=s),
        abstract_params(config),
        placement.param_shardings(config),
    )
    params = load_params(model_dir, target)
    if adapter is not None:
        deltas = {path: (d.a, d.b) for path, d in read_adapter(adapter, config).items()}
        with placement.activate():
            params = jax.jit(merge_deltas, out_shardings=placement.param_shardings(config), donate_argnums=0)(
                params, placement.put_replicated(deltas)
            )
    quantized = quantize == "int8"
    if quantized:
        with placement.activate():
            params = jax.jit(
                quantize_params, out_shardings=placement.param_shardings(config, quantized=True), donate_argnums=0
            )(params)
    # Every request's budget is at most the model's context: what cannot fit is refused before it is tokenized.
    max_tokens = config.decoder.max_position_embeddings
    processor = Processor.from_model_dir(model_dir, long_audio=long_audio, max_tokens=max_tokens)
    return LoadedModel(config, params, processor, dtype, model_dir, placement, attention, quantized)


def resolve_adapter(model_dir: str | Path, adapter: str | Path | None) -> tuple[Path, Path | None]:
    """(base model dir, adapter dir or None). A LoRA run's output model is an adapter dir whose
    adapter_config.json names the model dir it was trained on (base_model_name_or_path)."""
    model_dir = Path(model_dir).absolute()
    adapter = None if adapter is None else check_adapter_dir(adapter)
    if is_adapter_only(model_dir):
        if adapter is not None:
            raise CheckpointError(f"{model_dir} is itself a LoRA adapter; pass its base model as --model.")
        fix = "pass the base model (converted with `qwen-audio-jax convert`) as --model and this dir as --adapter."
        return adapter_base(model_dir, fix), model_dir
    return model_dir, adapter


def generate(
    model: LoadedModel,
    requests: Sequence[dict],
    options: GenerationOptions = GenerationOptions(),
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    engine: Engine | None = None,
    engine_options: EngineOptions | None = None,
) -> list[dict]:
    """One result dict per request, in order: {"id", "text", "token_ids", "finish_reason", "error"}.
    engine_options: slots, cache size and dtype (batch_size is a shortcut for EngineOptions(batch_size=...))."""
    from qwen_audio_jax.jobs.driver import run_list
    from qwen_audio_jax.jobs.generate import GenerateJob

    engine_options = engine_options or EngineOptions(batch_size=batch_size)
    return run_list(GenerateJob(model, options, engine_options, engine=engine), list(requests))


def score(model: LoadedModel, requests: Sequence[dict], *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict]:
    """Summed log-prob of each request's "completion" given its prompt: {"id", "logprob", "num_tokens", "error"}."""
    from qwen_audio_jax.jobs.driver import run_list
    from qwen_audio_jax.jobs.score import ScoreJob

    return run_list(ScoreJob(model, batch_size=batch_size), list(requests))
