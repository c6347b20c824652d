"""Every param of a model as the planner sees it (sharding/planner.py, sharding/plan_lora.py): its shape, its
PartitionSpec under the logical rules on a mesh that need not exist here, how many ways it is split, and whether it
trains. Shapes come from `jax.eval_shape`; nothing is allocated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.sharding.rules import Rules


@dataclasses.dataclass(frozen=True)
class ShapeMesh:
    """All `spec_for` needs of a mesh: {axis: size}. The mesh need not exist on this machine."""

    shape: Mapping[str, int]


@dataclasses.dataclass(frozen=True)
class ParamShard:
    """One param: its shape, PartitionSpec (as a string) and how many ways it is split."""

    path: str
    shape: tuple[int, ...]
    spec: str
    size: int
    shards: int  # product of the mesh axis sizes the spec uses
    fsdp_shards: int  # the part of `shards` that comes from the fsdp axis (undone by an all-gather)
    trainable: bool


@functools.lru_cache(maxsize=4)
def _param_table(config: ModelConfig) -> tuple[tuple[str, tuple[int, ...], tuple[str | None, ...]], ...]:
    """(path, shape, logical axis names) of every param; cached because eval_shape of the 7B takes ~1 s."""
    from flax import traverse_util

    from qwen_audio_jax.model.params import abstract_params, logical_axes

    shapes = traverse_util.flatten_dict(abstract_params(config), sep="/")
    names = traverse_util.flatten_dict(logical_axes(config), sep="/")
    return tuple((path, tuple(leaf.shape), tuple(names[path])) for path, leaf in shapes.items())


def param_shards(
    config: ModelConfig,
    mesh_shape: Mapping[str, int],
    rules: Rules,
    freeze_audio_encoder: bool = True,
    freeze_projector: bool = False,
) -> list[ParamShard]:
    """Every param with its sharding under `rules` on a mesh of `mesh_shape` (shapes only, no allocation),
    and whether the optimizer trains it (the param groups of model/params.py)."""
    from qwen_audio_jax.model.params import param_group

    frozen_groups = {"frozen"} | ({"encoder"} if freeze_audio_encoder else set())
    frozen_groups |= {"projector"} if freeze_projector else set()

    return [
        shard_of(path, shape, names, mesh_shape, rules, param_group(tuple(path.split("/"))) not in frozen_groups)
        for path, shape, names in _param_table(config)
    ]


def shard_of(
    path: str,
    shape: tuple[int, ...],
    names: tuple[str | None, ...],
    mesh_shape: Mapping[str, int],
    rules: Rules,
    trainable: bool,
) -> ParamShard:
    """One param of `shape` with logical axes `names`, placed as the trainer places it (sharding/mesh.py)."""
    from qwen_audio_jax.sharding.mesh import spec_for

    spec = spec_for(names, shape, ShapeMesh(dict(mesh_shape)), rules)
    used = spec_axes(spec)
    shards = math.prod(mesh_shape[a] for a in used)
    fsdp = mesh_shape["fsdp"] if "fsdp" in used else 1
    return ParamShard(path, shape, str(spec), math.prod(shape), shards, fsdp, trainable)


def spec_axes(spec) -> list[str]:
    """Mesh axes a PartitionSpec uses: P('fsdp', ('data', 'tensor'), None) -> ['fsdp', 'data', 'tensor']."""
    return [a for entry in spec if entry is not None for a in ((entry,) if isinstance(entry, str) else entry)]
