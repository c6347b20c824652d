"""AdamW with warmup + cosine decay, global-norm clipping, freezing, per-group learning rates and layer-wise
learning-rate decay for the audio encoder.

Defaults follow Qwen-Audio's published fine-tuning hyper-parameters (AdamW b1 0.9, b2 0.98, eps 1e-6,
weight decay 0.05, clip 1.0, cosine schedule). Param groups (model/params.py): "encoder" (audio_tower),
"projector" (multi_modal_projector), "lm" (everything else) and "frozen" (the encoder's stored positional
embedding, which the reference never trains). A frozen group gets `set_to_zero`, which keeps no optimizer
state, so freezing the 637M-parameter encoder also saves its 5 GB of fp32 Adam moments on a 7B run.
Weight decay applies to matrices only (kernels, embeddings), not to biases or norm scales.

Layer-wise decay (`encoder_layer_decay`, Qwen-Audio's pre-training table: 0.95): the encoder's updates are
scaled by decay**depth, depth counted from the top: its final LayerNorm and last layer 1, each layer below one
more, the conv stem L + 1. 1.0 is the plain optimizer (bit for bit); 0 freezes the encoder, as Qwen-Audio's SFT
stage did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.model.params import param_group


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-5
    min_learning_rate: float = 1e-6  # end of the cosine decay
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.05
    clip_norm: float = 1.0  # 0 disables clipping
    freeze_audio_encoder: bool = True
    freeze_projector: bool = False
    encoder_lr_multiplier: float = 1.0  # only used when the encoder is trained
    encoder_layer_decay: float = 1.0  # layer-wise learning-rate decay in the encoder (see the module docstring)

    def __post_init__(self):
        lr, end = self.learning_rate, self.min_learning_rate
        if lr <= 0 or end < 0:
            raise ConfigError(f"optim: learning_rate={lr:g} must be > 0 and min_learning_rate={end:g} >= 0.")
        if end > lr:
            raise ConfigError(
                f"optim: min_learning_rate={end:g} (where the cosine decay ends) is above learning_rate={lr:g}; "
                f"set both, e.g. optim.learning_rate={lr:g} optim.min_learning_rate={lr / 10:g}."
            )
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps must be >= 0.")
        if not 0.0 <= self.encoder_layer_decay <= 1.0:
            raise ConfigError(f"optim.encoder_layer_decay={self.encoder_layer_decay} must be in [0, 1].")
        if self.encoder_lr_multiplier < 0 or self.weight_decay < 0 or self.clip_norm < 0:
            raise ConfigError("optim: encoder_lr_multiplier, weight_decay and clip_norm must be >= 0.")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps > 0):
            raise ConfigError("optim: need 0 <= b1, b2 < 1 and eps > 0.")

    @property
    def encoder_frozen(self) -> bool:
        return self.freeze_audio_encoder or self.encoder_layer_decay == 0.0


def schedule(cfg: OptimConfig, total_steps: int) -> Callable[[int], jax.Array]:
    """Linear warmup from 0 to the peak, then cosine decay to min_learning_rate at total_steps."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.learning_rate,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.min_learning_rate,
    )


def encoder_depth_scale(decay: float, num_layers: int) -> optax.GradientTransformation:
    """Scales encoder updates by decay**depth (module docstring); stacked layers [L, ...] per layer index."""
    layer_scale = jnp.asarray([decay ** (num_layers - i) for i in range(num_layers)], jnp.float32)

    def scale(path, u):
        keys = tuple(k.key for k in path)
        if keys[:2] == ("audio_tower", "layers"):
            return u * layer_scale.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)
        if keys[:2] in (("audio_tower", "conv1"), ("audio_tower", "conv2")):
            return u * jnp.asarray(decay ** (num_layers + 1), u.dtype)
        return u * jnp.asarray(decay, u.dtype)  # the final LayerNorm sits with the last layer

    def update(updates, state, params=None):
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    cfg: OptimConfig, total_steps: int, encoder_layers: int = 0, adapters_only: bool = False
) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, learning-rate schedule). The optimizer expects the model's nested param dict, or with
    `adapters_only` the LoRA adapter tree (model/lora.py): every adapter trains with the one AdamW, the groups'
    freezing and encoder settings do not apply (the base is frozen as a whole and has no optimizer state)."""
    lr = schedule(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    if adapters_only:
        adamw = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask)
        return optax.chain(*parts, adamw), lr

    def adamw(multiplier: float):
        scaled = lr if multiplier == 1.0 else (lambda step: lr(step) * multiplier)
        return optax.adamw(scaled, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask)

    encoder = adamw(cfg.encoder_lr_multiplier)
    if cfg.encoder_layer_decay != 1.0:
        encoder = optax.chain(encoder, encoder_depth_scale(cfg.encoder_layer_decay, encoder_layers))
    groups = {
        "frozen": optax.set_to_zero(),
        "encoder": optax.set_to_zero() if cfg.encoder_frozen else encoder,
        "projector": optax.set_to_zero() if cfg.freeze_projector else adamw(1.0),
        "lm": adamw(1.0),
    }
    labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: param_group(tuple(k.key for k in path)), params
    )
    return optax.chain(*parts, optax.multi_transform(groups, labels)), lr


def _decay_mask(params):
    # Scanned layers stack a leading axis, so a stacked bias is 2-D: decide by the leaf's name, not its rank.
    # LoRA factors are matrices too (HF Trainer, and so LLaMA-Factory, decays them).
    names = ("kernel", "embedding", "lora_a", "lora_b")
    return jax.tree_util.tree_map_with_path(lambda path, x: path[-1].key in names, params)
