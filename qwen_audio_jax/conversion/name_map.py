"""Declarative map between Hugging Face tensor names and our param paths, with the transform each needs.

One `ParamRule` per target param. A stacked rule gathers the L per-layer HF tensors `...layers.{i}...` into
one [L, ...] array (our layers are scanned, DESIGN decision 2). Transforms are invertible so the same table
drives `convert` (HF -> ours) and `export-hf` (ours -> HF).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qwen_audio_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ParamRule:
    target: str  # our path, "/"-joined: "language_model/layers/self_attn/q_proj/kernel"
    source: str  # HF name; "{i}" stands for the layer index when `num_layers` is set
    transform: str  # "identity" | "linear" | "conv1d"
    num_layers: int | None = None  # None: a single tensor; else the count of stacked per-layer tensors

    def source_names(self) -> list[str]:
        if self.num_layers is None:
            return [self.source]
        return [self.source.format(i=i) for i in range(self.num_layers)]


def to_ours(transform: str, x: np.ndarray) -> np.ndarray:
    """HF (torch) layout -> ours: Linear (out, in) -> (in, out); Conv1d (O, I, K) -> (K, I, O)."""
    if transform == "linear":
        return x.T
    if transform == "conv1d":
        return x.transpose(2, 1, 0)
    return x


def to_hf(transform: str, x: np.ndarray) -> np.ndarray:
    """Inverse of `to_ours` (both transposes are their own inverse)."""
    return to_ours(transform, x)


def hf_shape(transform: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(to_ours(transform, np.empty(our_shape, dtype=np.uint8)).shape)


def qwen2_audio_rules(config: ModelConfig) -> list[ParamRule]:
    """Every param of Qwen2AudioForConditionalGeneration with its on-disk (transformers v4) name."""
    la, ld = config.audio.num_layers, config.decoder.num_layers
    rules: list[ParamRule] = []

    def one(target, source, transform="identity"):
        rules.append(ParamRule(target, source, transform))

    def stacked(target, source, transform, n):
        rules.append(ParamRule(target, source, transform, n))

    # Audio tower.
    for conv in ("conv1", "conv2"):
        one(f"audio_tower/{conv}/kernel", f"audio_tower.{conv}.weight", "conv1d")
        one(f"audio_tower/{conv}/bias", f"audio_tower.{conv}.bias")
    one("audio_tower/embed_positions", "audio_tower.embed_positions.weight")
    a = "audio_tower/layers"
    h = "audio_tower.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        stacked(f"{a}/self_attn/{proj}/kernel", f"{h}.self_attn.{proj}.weight", "linear", la)
        if proj != "k_proj":  # the reference's k_proj has no bias
            stacked(f"{a}/self_attn/{proj}/bias", f"{h}.self_attn.{proj}.bias", "identity", la)
    for fc in ("fc1", "fc2"):
        stacked(f"{a}/{fc}/kernel", f"{h}.{fc}.weight", "linear", la)
        stacked(f"{a}/{fc}/bias", f"{h}.{fc}.bias", "identity", la)
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        stacked(f"{a}/{norm}/scale", f"{h}.{norm}.weight", "identity", la)
        stacked(f"{a}/{norm}/bias", f"{h}.{norm}.bias", "identity", la)
    one("audio_tower/layer_norm/scale", "audio_tower.layer_norm.weight")
    one("audio_tower/layer_norm/bias", "audio_tower.layer_norm.bias")

    # Projector.
    one("multi_modal_projector/linear/kernel", "multi_modal_projector.linear.weight", "linear")
    one("multi_modal_projector/linear/bias", "multi_modal_projector.linear.bias")

    # Language model.
    one("language_model/embed_tokens/embedding", "language_model.model.embed_tokens.weight")
    d = "language_model/layers"
    h = "language_model.model.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        stacked(f"{d}/self_attn/{proj}/kernel", f"{h}.self_attn.{proj}.weight", "linear", ld)
        if proj != "o_proj":  # qkv have biases, o_proj does not
            stacked(f"{d}/self_attn/{proj}/bias", f"{h}.self_attn.{proj}.bias", "identity", ld)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        stacked(f"{d}/mlp/{proj}/kernel", f"{h}.mlp.{proj}.weight", "linear", ld)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        stacked(f"{d}/{norm}/scale", f"{h}.{norm}.weight", "identity", ld)
    one("language_model/norm/scale", "language_model.model.norm.weight")
    one("lm_head/kernel", "language_model.lm_head.weight", "linear")
    return rules


# transformers v5 runtime names (REFERENCE 5.2). Checkpoints saved by v5 use the v4 names on disk, but a
# state dict taken from a live v5 model (or a checkpoint saved with save_original_format=False) uses these.
_V5_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def canonical_hf_name(name: str) -> str:
    """Maps a transformers v5 runtime name onto the on-disk (v4) name; other names are returned unchanged."""
    for new, old in _V5_PREFIXES:
        if name.startswith(new):
            return old + name[len(new) :]
    return name
