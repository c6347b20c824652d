"""One placement path for every job: params, batches and caches go onto a mesh, results come back, the same
way on one device (a 1x1x1 mesh), many devices and many hosts (docs/decisions.md §12).

    placement = Placement.create("data=2,fsdp=4")      # or Placement.create(None): one device
    params = jax.device_put(params, placement.param_shardings(config))
    with placement.activate():                         # the mesh + logical rules for tracing
        out = jitted(params, placement.put(tokens_BT))
    tokens = placement.to_host(out)                    # the full value, on every process

Multi-host: every process holds the same global host batch (assembled with `gather_processes`, rows and
their clips in process order) and `put` gives each device its shard of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.sharding.mesh import batch_axes, make_mesh, param_shardings, spec_for
from qwen_audio_jax.sharding.rules import LOGICAL_RULES, Rules


@dataclasses.dataclass(frozen=True)
class Placement:
    mesh: Mesh
    rules: Rules = LOGICAL_RULES

    @classmethod
    def create(cls, spec: str | None = None, rules: Rules = LOGICAL_RULES) -> Placement:
        return cls(make_mesh(spec), rules)

    # ---- shardings ---------------------------------------------------------------------------------------
    def param_shardings(self, config: ModelConfig, quantized: bool = False, lora=None) -> dict:
        """Shardings of the param tree (`quantized`: the int8 tree; `lora`: a LoraSpec, with its adapters)."""
        return param_shardings(self.mesh, config, self.rules, quantized, lora)

    @property
    def batch_axes(self) -> tuple[str, ...]:
        return batch_axes(self.mesh, self.rules)

    @property
    def batch_divisor(self) -> int:
        """Batch sizes are padded up to a multiple of this (never refused)."""
        return math.prod(self.mesh.shape[a] for a in self.batch_axes)

    def round_batch(self, n: int) -> int:
        """n rounded up to a multiple of the batch axes and of the process count (each process owns rows)."""
        d = math.lcm(self.batch_divisor, jax.process_count())
        return -(-n // d) * d

    def batch_sharding(self, ndim: int, axis: int = 0) -> NamedSharding:
        """Dim `axis` split over the batch axes, the rest replicated."""
        names = self.batch_axes
        spec = [None] * ndim
        spec[axis] = None if not names else (names[0] if len(names) == 1 else names)
        return NamedSharding(self.mesh, P(*spec))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def logical_sharding(self, names, shape) -> NamedSharding:
        """The sharding of a value with logical axis `names` (e.g. the KV cache's axes.CACHE_AXES)."""
        return NamedSharding(self.mesh, spec_for(names, shape, self.mesh, self.rules))

    # ---- host <-> device ---------------------------------------------------------------------------------
    def put(self, x: np.ndarray | None, axis: int = 0) -> jax.Array | None:
        """A global host array onto the mesh, dim `axis` split over the batch axes when it divides (else
        replicated: clips, for example, are not aligned with rows)."""
        if x is None:
            return None
        if x.shape[axis] % self.batch_divisor:
            return jax.device_put(x, self.replicated())
        return jax.device_put(x, self.batch_sharding(x.ndim, axis))

    def put_replicated(self, x):
        return None if x is None else jax.device_put(x, self.replicated())

    def to_host(self, tree):
        """Device values -> numpy, the full global value on every process."""
        if jax.process_count() == 1:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils

        return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

    @contextlib.contextmanager
    def activate(self):
        """The mesh for sharding constraints and the logical-axis rules they are written in, while tracing and
        calling jitted steps."""
        import flax.linen as nn

        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield


def gather_processes(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Every process's host array, concatenated along `axis` in process order (identical on all processes).
    The one multi-host gather: rows and their clips stay aligned because both are ordered by process."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    parts = np.asarray(multihost_utils.process_allgather(x, tiled=False))
    return np.concatenate(list(parts), axis=axis)


def agree_max(values) -> tuple[int, ...]:
    """Element-wise maximum of small int vectors over processes (bucket sizes every process must share)."""
    local = np.asarray(values, np.int64).reshape(-1)
    if jax.process_count() == 1:
        return tuple(int(v) for v in local)
    return tuple(int(v) for v in gather_processes(local[None], axis=0).max(axis=0))
