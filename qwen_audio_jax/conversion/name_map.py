"""Declarative map between Hugging Face tensor names and our param paths, with the transform each needs, for
both generations (docs/reference.md §3.6, §5.1).

One `ParamRule` per target param. A stacked rule gathers the L per-layer HF tensors `...{i}...` into one
[L, ...] array (our layers are scanned). A rule with a `part` takes one of several equal row blocks of its
source: Qwen-7B's fused `c_attn` holds [q | k | v]. Transforms are invertible, so the same table drives
`convert` (HF -> ours) and `export-hf` (ours -> HF, parts concatenated back in order).
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
    part: tuple[int, int] | None = None  # (index, count): this rule's row block of the source

    def source_names(self) -> list[str]:
        if self.num_layers is None:
            return [self.source]
        return [self.source.format(i=i) for i in range(self.num_layers)]


def to_ours(rule: ParamRule, x: np.ndarray) -> np.ndarray:
    """HF (torch) layout -> ours: Linear (out, in) -> (in, out); Conv1d (O, I, K) -> (K, I, O); a part's rows."""
    if rule.part is not None:
        index, count = rule.part
        x = np.split(x, count, axis=0)[index]
    if rule.transform == "linear":
        return x.T
    if rule.transform == "conv1d":
        return x.transpose(2, 1, 0)
    return x


def to_hf(rule: ParamRule, x: np.ndarray) -> np.ndarray:
    """Inverse of `to_ours` for one part (both transposes are their own inverse); parts are joined by the caller."""
    if rule.transform == "linear":
        return x.T
    if rule.transform == "conv1d":
        return x.transpose(2, 1, 0)
    return x


def hf_shape(rule: ParamRule, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The full HF tensor shape a rule reads, given our (per-layer) shape."""
    shape = to_hf(rule, np.empty(our_shape, dtype=np.uint8)).shape
    if rule.part is not None:
        shape = (shape[0] * rule.part[1], *shape[1:])
    return tuple(shape)


def rules_for(config: ModelConfig) -> list[ParamRule]:
    """Every param of the model with its on-disk name in the checkpoint format of its generation."""
    return qwen_audio_v1_rules(config) if config.is_v1 else qwen2_audio_rules(config)


class _Table:
    def __init__(self):
        self.rules: list[ParamRule] = []

    def one(self, target, source, transform="identity", part=None):
        self.rules.append(ParamRule(target, source, transform, None, part))

    def stacked(self, target, source, transform, n, part=None):
        self.rules.append(ParamRule(target, source, transform, n, part))


def qwen2_audio_rules(config: ModelConfig) -> list[ParamRule]:
    """Qwen2AudioForConditionalGeneration with its on-disk (transformers v4) names."""
    la, ld = config.audio.num_layers, config.decoder.num_layers
    t = _Table()
    for conv in ("conv1", "conv2"):
        t.one(f"audio_tower/{conv}/kernel", f"audio_tower.{conv}.weight", "conv1d")
        t.one(f"audio_tower/{conv}/bias", f"audio_tower.{conv}.bias")
    t.one("audio_tower/embed_positions", "audio_tower.embed_positions.weight")
    a, h = "audio_tower/layers", "audio_tower.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        t.stacked(f"{a}/self_attn/{proj}/kernel", f"{h}.self_attn.{proj}.weight", "linear", la)
        if proj != "k_proj":  # the reference's k_proj has no bias
            t.stacked(f"{a}/self_attn/{proj}/bias", f"{h}.self_attn.{proj}.bias", "identity", la)
    for fc in ("fc1", "fc2"):
        t.stacked(f"{a}/{fc}/kernel", f"{h}.{fc}.weight", "linear", la)
        t.stacked(f"{a}/{fc}/bias", f"{h}.{fc}.bias", "identity", la)
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        t.stacked(f"{a}/{norm}/scale", f"{h}.{norm}.weight", "identity", la)
        t.stacked(f"{a}/{norm}/bias", f"{h}.{norm}.bias", "identity", la)
    t.one("audio_tower/layer_norm/scale", "audio_tower.layer_norm.weight")
    t.one("audio_tower/layer_norm/bias", "audio_tower.layer_norm.bias")
    t.one("multi_modal_projector/linear/kernel", "multi_modal_projector.linear.weight", "linear")
    t.one("multi_modal_projector/linear/bias", "multi_modal_projector.linear.bias")
    t.one("language_model/embed_tokens/embedding", "language_model.model.embed_tokens.weight")
    d, h = "language_model/layers", "language_model.model.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        t.stacked(f"{d}/self_attn/{proj}/kernel", f"{h}.self_attn.{proj}.weight", "linear", ld)
        if proj != "o_proj":  # qkv have biases, o_proj does not
            t.stacked(f"{d}/self_attn/{proj}/bias", f"{h}.self_attn.{proj}.bias", "identity", ld)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        t.stacked(f"{d}/mlp/{proj}/kernel", f"{h}.mlp.{proj}.weight", "linear", ld)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        t.stacked(f"{d}/{norm}/scale", f"{h}.{norm}.weight", "identity", ld)
    t.one("language_model/norm/scale", "language_model.model.norm.weight")
    t.one("lm_head/kernel", "language_model.lm_head.weight", "linear")
    return t.rules


def qwen_audio_v1_rules(config: ModelConfig) -> list[ParamRule]:
    """Qwen-Audio (v1) `QWenLMHeadModel` with its on-disk names: Qwen-7B mapped onto the Qwen2 layout (c_attn
    split into q/k/v, w2 is the gate and w1 the up projection) and the Whisper-style audio tower."""
    la, ld = config.audio.num_layers, config.decoder.num_layers
    t = _Table()
    for conv in ("conv1", "conv2"):
        t.one(f"audio_tower/{conv}/kernel", f"transformer.audio.{conv}.weight", "conv1d")
        t.one(f"audio_tower/{conv}/bias", f"transformer.audio.{conv}.bias")
    t.one("audio_tower/embed_positions", "transformer.audio.positional_embedding")
    a, h = "audio_tower/layers", "transformer.audio.blocks.{i}"
    for ours, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out")):
        t.stacked(f"{a}/self_attn/{ours}/kernel", f"{h}.attn.{theirs}.weight", "linear", la)
        if ours != "k_proj":  # key has no bias
            t.stacked(f"{a}/self_attn/{ours}/bias", f"{h}.attn.{theirs}.bias", "identity", la)
    for ours, theirs in (("fc1", "mlp.0"), ("fc2", "mlp.2")):
        t.stacked(f"{a}/{ours}/kernel", f"{h}.{theirs}.weight", "linear", la)
        t.stacked(f"{a}/{ours}/bias", f"{h}.{theirs}.bias", "identity", la)
    for ours, theirs in (("self_attn_layer_norm", "attn_ln"), ("final_layer_norm", "mlp_ln")):
        t.stacked(f"{a}/{ours}/scale", f"{h}.{theirs}.weight", "identity", la)
        t.stacked(f"{a}/{ours}/bias", f"{h}.{theirs}.bias", "identity", la)
    t.one("audio_tower/layer_norm/scale", "transformer.audio.ln_post.weight")
    t.one("audio_tower/layer_norm/bias", "transformer.audio.ln_post.bias")
    t.one("multi_modal_projector/linear/kernel", "transformer.audio.proj.weight", "linear")
    t.one("multi_modal_projector/linear/bias", "transformer.audio.proj.bias")
    t.one("audio_bos_eos_token", "transformer.audio.audio_bos_eos_token.weight")
    t.one("language_model/embed_tokens/embedding", "transformer.wte.weight")
    d, h = "language_model/layers", "transformer.h.{i}"
    for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):  # c_attn rows: [q | k | v]
        t.stacked(f"{d}/self_attn/{proj}/kernel", f"{h}.attn.c_attn.weight", "linear", ld, (part, 3))
        t.stacked(f"{d}/self_attn/{proj}/bias", f"{h}.attn.c_attn.bias", "identity", ld, (part, 3))
    t.stacked(f"{d}/self_attn/o_proj/kernel", f"{h}.attn.c_proj.weight", "linear", ld)
    for ours, theirs in (("gate_proj", "w2"), ("up_proj", "w1"), ("down_proj", "c_proj")):
        t.stacked(f"{d}/mlp/{ours}/kernel", f"{h}.mlp.{theirs}.weight", "linear", ld)
    t.stacked(f"{d}/input_layernorm/scale", f"{h}.ln_1.weight", "identity", ld)
    t.stacked(f"{d}/post_attention_layernorm/scale", f"{h}.ln_2.weight", "identity", ld)
    t.one("language_model/norm/scale", "transformer.ln_f.weight")
    t.one("lm_head/kernel", "lm_head.weight", "linear")
    return t.rules


# transformers v5 runtime names (docs/reference.md §5.2). Checkpoints saved by v5 use the
# v4 names on disk, but a state dict taken from a live v5 model (or saved with save_original_format=False)
# uses these.
_V5_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def canonical_hf_name(name: str, v1: bool = False) -> str:
    """Maps a transformers v5 runtime name onto the on-disk (v4) name; v1 names are returned unchanged."""
    if v1:
        return name
    for new, old in _V5_PREFIXES:
        if name.startswith(new):
            return old + name[len(new) :]
    return name
