"""The LoRA / QLoRA part of a training memory plan (sharding/planner.py): what changes when only adapters train.

    weights      the frozen base in lora.base_dtype (bf16: 2 bytes; int8: the decoder kernels and lm_head at one
                 byte plus an fp32 scale per output channel, the rest bf16) + the fp32 adapters
    optimizer    AdamW's two fp32 moments of the adapters only (the adapters are their own fp32 master)
    gradients    the adapters' (fp32), twice with grad_accum > 1 (the accumulator holds the adapters only)
    reference    none: DPO's reference is the same base with the adapters switched off (training/step.py)
The activations keep the full model's formulas with the weight-gradient terms of the adapters only (the frozen
kernels and lm_head get none); the adapters' own activations ([rows, T, r] per adapted layer) are negligible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.sharding.param_shards import ParamShard, shard_of
from qwen_audio_jax.sharding.rules import Rules

BASE_BYTES = {"float32": 4, "bfloat16": 2, "int8": 2}  # int8: the non-quantized leaves stay bf16


@dataclasses.dataclass(frozen=True)
class LoraPlan:
    """What a plan request says about LoRA: rank 0 is full training."""

    rank: int = 0
    base_dtype: str = "bfloat16"
    audio_encoder: bool = False

    @property
    def enabled(self) -> bool:
        return self.rank > 0


def adapter_shards(
    config: ModelConfig, mesh_shape: Mapping[str, int], rules: Rules, lora: LoraPlan
) -> list[ParamShard]:
    """Every adapter leaf (LoRA on each generation's every decoder linear layer, and the audio tower's with
    audio_encoder) as a trainable `ParamShard`, sharded as the trainer places it."""
    from flax import traverse_util

    from qwen_audio_jax.model.lora import DECODER_TARGETS, is_adapter, spec_from_targets
    from qwen_audio_jax.model.params import abstract_params, logical_axes

    targets = tuple(DECODER_TARGETS[bool(config.is_v1)])
    spec = spec_from_targets(targets, is_v1=config.is_v1, rank=lora.rank, alpha=1.0, audio=lora.audio_encoder)
    shapes = traverse_util.flatten_dict(abstract_params(config, lora=spec))
    names = traverse_util.flatten_dict(logical_axes(config, lora=spec))
    return [
        shard_of("/".join(path), tuple(leaf.shape), tuple(names[path]), mesh_shape, rules, trainable=True)
        for path, leaf in shapes.items()
        if is_adapter(path)
    ]
