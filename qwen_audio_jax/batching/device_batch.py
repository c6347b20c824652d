"""The one device-batch protocol: every job that runs rows through a jitted program (the engine's encode and
prefill, `score`, the DPO reference pass, the training step) goes through these steps, in this order:

    sizes = batch.agree(local_sizes)                 # every process: the same bucketed shapes (a NamedTuple)
    arrays = <build this process's rows at `sizes`>  # job-specific host arrays
    placed = batch.place(arrays)                     # all processes' rows, in process order, onto the mesh
    out = jitted(params, placed)                     # the same program on every process
    mine = batch.mine(out, local_rows)               # back to the host; this process's rows

and `run_isolated` gives per-request failure isolation around the call: a device error (out of memory, say) on
a group of rows is retried on halves of it, so only a row that fails alone gets its error line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import numpy as np

from qwen_audio_jax.sharding.placement import Placement, agree_max, gather_processes

Item = TypeVar("Item")
Result = TypeVar("Result")
Sizes = TypeVar("Sizes", bound=tuple)


class DeviceBatch:
    """Rows contributed by every process to one device call, on one placement."""

    def __init__(self, placement: Placement):
        self.placement = placement

    @property
    def process(self) -> tuple[int, int]:
        """(this process's index, process count)."""
        return jax.process_index(), jax.process_count()

    def agree(self, local_sizes: Sizes) -> Sizes:
        """Element-wise maximum over processes (bucket sizes, counts, flags; a flag comes back as 0 or 1).

        A NamedTuple of sizes comes back as the same NamedTuple, so callers name what they agree on instead of
        unpacking positions; a plain tuple or list of one kind of size (frames per clip) comes back as a tuple."""
        agreed = agree_max(local_sizes)
        return type(local_sizes)(*agreed) if hasattr(local_sizes, "_fields") else agreed

    def place(self, tree, row_axis: int | dict = 0, replicated: dict | Sequence[str] = ()):
        """Host arrays (a pytree of numpy arrays, this process's rows) -> global device arrays: every process's
        rows concatenated along `row_axis` in process order and split over the batch axes when they divide
        (row_axis may be {leaf name: axis} for dict and dataclass trees). Leaves named in `replicated` (arrays
        not aligned with rows, such as clips: {name: axis}, or names gathered along axis 0) are concatenated
        the same way and replicated on every device."""
        gather_axis = dict(replicated) if isinstance(replicated, dict) else {name: 0 for name in replicated}

        def one(path, x):
            if x is None:
                return None
            name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
            if name in gather_axis:
                return self.placement.put_replicated(gather_processes(np.asarray(x), gather_axis[name]))
            axis = row_axis.get(name, 0) if isinstance(row_axis, dict) else row_axis
            return self.placement.put(gather_processes(np.asarray(x), axis), axis)

        return jax.tree_util.tree_map_with_path(one, tree, is_leaf=lambda x: x is None)

    def fetch(self, tree):
        """Device values -> numpy: the full global value, on every process."""
        return self.placement.to_host(tree)

    def mine(self, tree, local_rows: int, axis: int = 0):
        """Device values -> numpy, this process's `local_rows` rows along `axis` (rows are in process order)."""
        offset = jax.process_index() * local_rows
        return jax.tree_util.tree_map(
            lambda x: np.take(x, np.arange(offset, offset + local_rows), axis=axis), self.fetch(tree)
        )


def run_isolated(
    items: list[Item],
    run: Callable[[list[Item]], list[Result]],
    on_error: Callable[[Item, Exception], Result],
    *,
    collective: bool | None = None,
) -> list[Result]:
    """run(items) -> one result per item, in order. If the call raises, the items are split in halves and each
    half is run again, down to single items; an item that still fails alone gets on_error(item, error).

    collective (default: more than one process): the call is one program on every process, so a retry would
    need the others' agreement; every item of a failed call then gets its error at once."""
    try:
        return run(items)
    except Exception as e:  # noqa: BLE001 - a device failure on these rows must not end the job
        if collective if collective is not None else jax.process_count() > 1:
            return [on_error(item, e) for item in items]
        if len(items) == 1:
            return [on_error(items[0], e)]
        half = len(items) // 2
        return run_isolated(items[:half], run, on_error, collective=False) + run_isolated(
            items[half:], run, on_error, collective=False
        )


def error_message(exc: Exception) -> str:
    """One line for a device error on a request: its type and the first line of its message."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"the device failed on this request ({type(exc).__name__}: {first})".rstrip() + "."
