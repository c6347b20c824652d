"""Rematerialisation (activation checkpointing) policies for scanned layers, chosen by name in configs."""

from __future__ import annotations

import flax.linen as nn
import jax

from qwen_audio_jax.errors import ConfigError

# name -> jax checkpoint policy (None in the table means "save nothing": recompute the whole layer).
REMAT_POLICIES = {
    "none": "none",
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_layer(layer_cls: type[nn.Module], policy: str) -> type[nn.Module]:
    """Wraps a layer class in nn.remat with the named policy ("none" returns it unchanged)."""
    if policy not in REMAT_POLICIES:
        raise ConfigError(f"unknown remat policy {policy!r}; choose one of {sorted(REMAT_POLICIES)}.")
    if policy == "none":
        return layer_cls
    # prevent_cse=False is safe (and faster) under scan, which already stops XLA from merging the copies.
    return nn.remat(layer_cls, policy=REMAT_POLICIES[policy], prevent_cse=False)
