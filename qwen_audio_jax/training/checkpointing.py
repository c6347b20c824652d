"""Training checkpoints: an Orbax CheckpointManager holding the TrainState (params, optimizer state, step, RNG)
and the data iterator's state, saved every N steps (asynchronously), keeping the last K.

Restoring goes straight into the state's shardings (each host reads only its shards). A checkpoint is only
visible once complete (Orbax commits atomically), so a killed run resumes from the last complete step.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from qwen_audio_jax.training.step import TrainState


class TrainCheckpoints:
    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True):
        self.every = every
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=max(every, 1),
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict, force: bool = False) -> bool:
        """Saves if `step` is due (every N) or `force`; returns whether a save started."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            force=force,
        )

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        """abstract_state: the TrainState with jax.ShapeDtypeStruct leaves carrying the target shardings."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
        )
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def saved_steps(directory: str | Path) -> list[int]:
    """The committed checkpoints' steps in `directory`, without opening Orbax (a step's directory is named by
    its number only once Orbax has committed it; an unfinished one carries a temporary suffix)."""
    try:
        return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:  # no checkpoints directory yet
        return []


def abstract_like(state: TrainState) -> TrainState:
    """ShapeDtypeStructs with the live state's shardings (the restore target)."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
