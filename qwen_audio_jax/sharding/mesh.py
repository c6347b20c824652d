"""Device meshes from a spec string, and the sharding of params, batches and caches under logical-axis rules.

    make_mesh("data=2,fsdp=2,tensor=2")   # axes ("data", "fsdp", "tensor"); "-1" takes the remaining devices
    shardings = param_shardings(mesh, config, RULES)

A logical axis maps to mesh axes through a rule table (`axes.py`). A dimension whose size does not divide
the product of its mesh axes stays replicated (e.g. 2 KV heads over tensor=4); `param_shardings` applies that
rule, and `describe` reports it, so "what the rules say" is always the sharding a param actually gets.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.sharding import axes as ax

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def parse_mesh_spec(spec: str | None, num_devices: int) -> dict[str, int]:
    """'data=2,fsdp=-1' -> {"data": 2, "fsdp": num_devices // 2, "tensor": 1}. Missing axes are 1; no spec
    means pure data parallelism over every device."""
    sizes = {name: 1 for name in ax.MESH_AXES}
    if not spec:
        sizes["data"] = num_devices
    else:
        for part in spec.split(","):
            name, _, value = part.strip().partition("=")
            if name not in sizes or not value.strip().lstrip("-").isdigit():
                raise ConfigError(f"bad mesh spec {spec!r}: use e.g. data=2,fsdp=2,tensor=2 (axes: {', '.join(ax.MESH_AXES)}).")
            sizes[name] = int(value)
    rest = [n for n, s in sizes.items() if s == -1]
    if len(rest) > 1:
        raise ConfigError(f"bad mesh spec {spec!r}: only one axis may be -1.")
    known = math.prod(s for s in sizes.values() if s != -1)
    if rest:
        if num_devices % known:
            raise ConfigError(f"mesh {spec!r}: {num_devices} devices do not divide by {known}.")
        sizes[rest[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ConfigError(f"mesh {spec!r} needs {math.prod(sizes.values())} devices, but {num_devices} are available.")
    return sizes


def make_mesh(spec: str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over all (or the given) devices, laid out by jax.make_mesh."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[a] for a in ax.MESH_AXES)
    # Auto axes: shardings come from in/out_shardings and constraints (not sharding-in-types).
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    try:
        return jax.make_mesh(shape, ax.MESH_AXES, axis_types=auto, devices=devices)
    except (TypeError, ValueError):  # a device set make_mesh cannot tile: plain row-major order
        return Mesh(np.asarray(devices).reshape(shape), ax.MESH_AXES, axis_types=auto)


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """PartitionSpec for a value with logical axis `names`; a dim its mesh axes do not divide is replicated,
    and a mesh axis already used by an earlier dim is not reused."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, size in zip(names, shape):
        target = table.get(name) if name is not None else None
        mesh_axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
        if mesh_axes and size % math.prod(mesh.shape[a] for a in mesh_axes) == 0:
            used.update(mesh_axes)
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
        else:
            out.append(None)
    return P(*out)


def param_shardings(mesh: Mesh, config: ModelConfig, rules: Rules = ax.TRAIN_RULES) -> dict:
    """NamedSharding for every param, from its logical axes and shape (same tree as the params)."""
    from qwen_audio_jax.model.params import abstract_params, logical_axes

    specs = traverse_util.flatten_dict(logical_axes(config))
    shapes = traverse_util.flatten_dict(abstract_params(config))
    out = {k: NamedSharding(mesh, spec_for(tuple(specs[k]), shapes[k].shape, mesh, rules)) for k in shapes}
    return traverse_util.unflatten_dict(out)


def batch_axes(mesh: Mesh, rules: Rules = ax.TRAIN_RULES) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over (those of the BATCH rule with size > 1)."""
    target = dict(rules)[ax.BATCH]
    names = (target,) if isinstance(target, str) else tuple(target or ())
    return tuple(a for a in names if mesh.shape[a] > 1)


def batch_divisor(mesh: Mesh, rules: Rules = ax.TRAIN_RULES) -> int:
    """Batch sizes must be a multiple of this (batches are padded up to it, never refused)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = ax.TRAIN_RULES) -> NamedSharding:
    """Leading (batch) dim split over the batch axes, the rest replicated."""
    axes_ = batch_axes(mesh, rules)
    lead = None if not axes_ else (axes_[0] if len(axes_) == 1 else axes_)
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def describe(shardings: dict) -> dict[str, str]:
    """{"a/b/c": "P('fsdp', 'tensor')"} for logs and the planner."""
    return {k: str(s.spec) for k, s in traverse_util.flatten_dict(shardings, sep="/").items()}


@contextlib.contextmanager
def activated(mesh: Mesh | None, rules: Rules):
    """Context for calling (and so tracing) jitted steps on a mesh: the mesh for sharding constraints and the
    logical-axis rules they are written in. A no-op without a mesh."""
    if mesh is None:
        yield
        return
    import flax.linen as nn

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
