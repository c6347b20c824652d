"""Rematerialisation (activation checkpointing) policies for scanned layers, chosen by name in configs.

The names are the one list every consumer checks against (training configs, `plan --remat`); jax is imported
only when a policy is applied, so the command line can offer the names without importing it."""

from __future__ import annotations

from qwen_audio_jax.choices import REMAT_POLICIES  # what each policy saves is said there
from qwen_audio_jax.errors import ConfigError


def check_policy(policy: str) -> str:
    if policy not in REMAT_POLICIES:
        raise ConfigError(f"unknown remat policy {policy!r}; choose one of {', '.join(REMAT_POLICIES)}.")
    return policy


def remat_layer(layer_cls, policy: str):
    """Wraps a linen layer class in nn.remat with the named policy ("none" returns it unchanged)."""
    import flax.linen as nn
    import jax

    check_policy(policy)
    if policy == "none":
        return layer_cls
    jax_policy = {
        "full": None,  # save nothing
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[policy]
    # prevent_cse=False is safe (and faster) under scan, which already stops XLA from merging the copies.
    return nn.remat(layer_cls, policy=jax_policy, prevent_cse=False)
