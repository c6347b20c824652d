"""Device meshes from a spec string, and PartitionSpecs from logical axis names under the rule table.

    make_mesh("data=2,fsdp=2,tensor=2")   # axes ("data", "fsdp", "tensor"); "-1" takes the remaining devices
    make_mesh(None)                       # one device: the 1x1x1 mesh every single-device job runs on

A logical axis maps to mesh axes through `sharding/rules.py`. A dimension whose size does not divide the
product of its mesh axes stays replicated (e.g. 2 KV heads over tensor=4), so "what the rules say" is always
the sharding a param actually gets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.model.axes import BATCH
from qwen_audio_jax.model.params import abstract_params, logical_axes
from qwen_audio_jax.sharding.rules import MESH_AXES, Rules


def parse_mesh_spec(spec: str | None, num_devices: int) -> dict[str, int]:
    """'data=2,fsdp=-1' -> {"data": 2, "fsdp": num_devices // 2, "tensor": 1}. Missing axes are 1; no spec
    means pure data parallelism over every device."""
    sizes = {name: 1 for name in MESH_AXES}
    if not spec:
        sizes["data"] = num_devices
    else:
        for part in spec.split(","):
            name, _, value = part.strip().partition("=")
            value = value.strip()
            if name not in sizes or not value.lstrip("-").isdigit() or not (int(value) >= 1 or int(value) == -1):
                raise ConfigError(
                    f"bad mesh spec {spec!r}: use e.g. data=2,fsdp=2,tensor=2 (axes: {', '.join(MESH_AXES)}; "
                    "sizes >= 1, or -1 for the remaining devices)."
                )
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
    """A ("data", "fsdp", "tensor") mesh over the given devices. No spec and no devices: the first device only
    (a 1x1x1 mesh), so one device runs the very same sharded programs as a pod."""
    if devices is None:
        devices = jax.devices() if spec else jax.devices()[:1]
    devices = list(devices)
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    # Auto axes: shardings come from in/out_shardings and constraints (not sharding-in-types).
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    except (TypeError, ValueError):  # a device set make_mesh cannot tile: plain row-major order
        return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh, rules: Rules) -> P:
    """PartitionSpec for a value with logical axis `names`; a dim its mesh axes do not divide is replicated,
    and a mesh axis already used by an earlier dim is not reused. `mesh` needs only `.shape` ({axis: size})."""
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


def param_shardings(mesh: Mesh, config: ModelConfig, rules: Rules, quantized: bool = False, lora=None) -> dict:
    """NamedSharding for every param, from its logical axes and shape (same tree as the params; `quantized`:
    the int8 tree, whose scales follow their kernel's output axis; `lora`: a LoraSpec, the tree with adapters)."""
    specs = traverse_util.flatten_dict(logical_axes(config, quantized, lora))
    shapes = traverse_util.flatten_dict(abstract_params(config, quantized=quantized, lora=lora))
    out = {k: NamedSharding(mesh, spec_for(tuple(specs[k]), shapes[k].shape, mesh, rules)) for k in shapes}
    return traverse_util.unflatten_dict(out)


def batch_axes(mesh, rules: Rules) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over (those of the BATCH rule with size > 1)."""
    target = dict(rules)[BATCH]
    names = (target,) if isinstance(target, str) else tuple(target or ())
    return tuple(a for a in names if mesh.shape[a] > 1)
