"""LoRA adapters on the model's linear layers (PEFT's arithmetic), for LoRA / QLoRA training.

A targeted linear layer computes, as PEFT's `lora.Linear` does,

    y = base(x) + ((dropout(x) @ lora_a) @ lora_b) * scale        lora_a [in, r], lora_b [r, out]

with scale = alpha / r (alpha / sqrt(r) with rsLoRA). `lora_a`, `lora_b` live in the "params" collection beside
the layer's kernel (stacked over the scanned layers like every other leaf), so the adapted module's param tree is
the base tree plus the adapter leaves: training holds the base (frozen, possibly bf16 or int8) and the adapters
(fp32, trained) as two trees and joins them for the forward pass (`join`). The same module built without a
`LoraSpec` over the base tree alone is the model with its adapters switched off: DPO's reference pass.

Qwen-Audio v1's fused `c_attn` (one HF Linear for [q | k | v]) carries one adapter over all three: a shared
`lora_a` [in, r] and `lora_b` [r, 3 * out] whose column blocks add to q, k and v (`FusedLora`, in the attention).

Inference never runs this path: `--adapter` merges the adapters into the kernels at load (conversion/peft.py).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

ADAPTER_LEAVES = ("lora_a", "lora_b")

# The HF module names a `lora.targets` list may hold, per generation, and the decoder layers they mean (ours).
# v1's "c_proj" names both the attention output and the MLP's down projection (PEFT matches by suffix).
DECODER_TARGETS = {
    False: {
        "q_proj": ("q_proj",),
        "k_proj": ("k_proj",),
        "v_proj": ("v_proj",),
        "o_proj": ("o_proj",),
        "gate_proj": ("gate_proj",),
        "up_proj": ("up_proj",),
        "down_proj": ("down_proj",),
    },
    True: {
        "c_attn": ("c_attn",),  # fused q | k | v: one adapter (FusedLora)
        "c_proj": ("o_proj", "down_proj"),
        "w1": ("up_proj",),
        "w2": ("gate_proj",),
    },
}
# With `audio_encoder: true`, every linear layer of the audio tower's blocks (both generations' towers are the
# same Whisper encoder under different names).
AUDIO_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclasses.dataclass(frozen=True)
class LoraLayer:
    """What one adapted linear layer needs (static: part of the module's definition)."""

    rank: int
    scale: float
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Which of the model's linear layers carry adapters, and their shape (hashable: a module attribute).

    decoder: our decoder layer names adapted ("q_proj" ... "down_proj", or "c_attn" for v1's fused q|k|v);
    audio: the audio tower's block linears too."""

    rank: int
    alpha: float
    dropout: float = 0.0
    decoder: tuple[str, ...] = ()
    audio: bool = False
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def layer(self) -> LoraLayer:
        return LoraLayer(self.rank, self.scale, self.dropout)

    def decoder_layer(self, name: str) -> LoraLayer | None:
        return self.layer() if name in self.decoder else None

    def audio_layer(self) -> LoraLayer | None:
        return self.layer() if self.audio else None


def spec_from_targets(
    targets, *, is_v1: bool, rank: int, alpha: float, dropout: float = 0.0, audio: bool = False, rslora: bool = False
) -> LoraSpec:
    """The spec for a list of HF module names (each generation's own names); ValueError names the known ones."""
    table = DECODER_TARGETS[bool(is_v1)]
    unknown = [t for t in targets if t not in table]
    if unknown:
        model = "Qwen-Audio (v1)" if is_v1 else "Qwen2-Audio"
        raise ValueError(f"lora.targets {unknown} are not linear layers of {model}; known: {sorted(table)}.")
    ours = tuple(sorted({name for t in targets for name in table[t]}))
    return LoraSpec(rank=rank, alpha=alpha, dropout=dropout, decoder=ours, audio=audio, rslora=rslora)


def lora_delta(module: nn.Module, x: jax.Array, features: int, axes, layer: LoraLayer, dtype) -> jax.Array:
    """((dropout(x) @ lora_a) @ lora_b) * scale with the two params created in `module`'s scope.

    x [..., in] -> [..., features]. lora_a starts as PEFT's kaiming-uniform (bound 1/sqrt(in)), lora_b as zeros,
    so a fresh adapter changes nothing. Dropout runs only when the apply was given a "dropout" rng (training)."""
    d_in = x.shape[-1]
    bound = 1.0 / math.sqrt(d_in)
    init_a = nn.initializers.uniform(2 * bound)
    a = module.param(
        "lora_a",
        nn.with_logical_partitioning(lambda k, s, d: init_a(k, s, d) - bound, (axes[0], None)),
        (d_in, layer.rank),
        jnp.float32,
    )
    b = module.param(
        "lora_b",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, axes[1])),
        (layer.rank, features),
        jnp.float32,
    )
    if layer.dropout > 0 and module.has_rng("dropout"):
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - layer.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - layer.dropout), 0).astype(x.dtype)
    u = jnp.dot(x.astype(dtype), a.astype(dtype))
    return jnp.dot(u, b.astype(dtype)) * jnp.asarray(layer.scale, dtype)


class FusedLora(nn.Module):
    """v1's `c_attn` adapter: one lora_a [in, r], one lora_b [r, sum(sizes)]; returns the deltas of q, k, v."""

    sizes: tuple[int, ...]
    axes: tuple[str | None, str | None]
    layer: LoraLayer
    dtype: object

    @nn.compact
    def __call__(self, x):
        delta = lora_delta(self, x, sum(self.sizes), self.axes, self.layer, self.dtype)
        cuts = [sum(self.sizes[: i + 1]) for i in range(len(self.sizes) - 1)]
        return jnp.split(delta, cuts, axis=-1)


# ---- the two trees -----------------------------------------------------------------------------------------------
def is_adapter(path: tuple[str, ...]) -> bool:
    return path[-1] in ADAPTER_LEAVES


def split(tree: dict) -> tuple[dict, dict]:
    """(base, adapters) of an adapted model's param tree (nested dicts; either may be empty)."""
    flat = traverse_util.flatten_dict(tree)
    base = {k: v for k, v in flat.items() if not is_adapter(k)}
    adapters = {k: v for k, v in flat.items() if is_adapter(k)}
    return traverse_util.unflatten_dict(base), traverse_util.unflatten_dict(adapters)


def join(base: dict, adapters: dict) -> dict:
    """The adapted model's param tree: the base tree with the adapter leaves added (no array is copied)."""
    flat = traverse_util.flatten_dict(base)
    flat.update(traverse_util.flatten_dict(adapters))
    return traverse_util.unflatten_dict(flat)


def init_adapters(abstract: dict, rng: jax.Array) -> dict:
    """Fresh fp32 adapters for an abstract adapter tree: lora_a kaiming-uniform (PEFT's init), lora_b zeros.
    One key per leaf path (folded from its name), so the values do not depend on the tree's order."""
    flat = traverse_util.flatten_dict(abstract)
    out = {}
    for path, leaf in flat.items():
        if path[-1] == "lora_b":
            out[path] = jnp.zeros(leaf.shape, jnp.float32)
        else:
            key = jax.random.fold_in(rng, _stable_hash("/".join(path)))
            bound = 1.0 / math.sqrt(leaf.shape[-2])
            out[path] = jax.random.uniform(key, leaf.shape, jnp.float32, -bound, bound)
    return traverse_util.unflatten_dict(out)


def _stable_hash(text: str) -> int:
    h = 0
    for ch in text.encode():
        h = (h * 131 + ch) % (2**31 - 1)
    return h


# ---- merging (inference: `--adapter`) ----------------------------------------------------------------------------
def merge_deltas(params: dict, deltas: dict) -> dict:
    """params with kernel += a @ b for each {kernel path: (a [L?, in, R], b [L?, R, out])} (fp32 arithmetic, then
    the kernel's own dtype). Pure: jit it with the params donated and their shardings as out_shardings."""
    flat = traverse_util.flatten_dict(params)
    for path, (a, b) in deltas.items():
        kernel = flat[path]
        if kernel.dtype == jnp.int8:
            raise ValueError(f"{'/'.join(path)} is int8: merge adapters before quantizing")
        delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        flat[path] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)
