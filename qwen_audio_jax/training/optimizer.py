"""AdamW with warmup + cosine decay, global-norm clipping, freezing and per-group learning rates.

Defaults follow Qwen-Audio's published fine-tuning hyper-parameters (AdamW b1 0.9, b2 0.98, eps 1e-6,
weight decay 0.05, clip 1.0, cosine schedule). Param groups: "encoder" (audio_tower), "projector"
(multi_modal_projector), "lm" (everything else) and "frozen" (the encoder's stored positional embedding, which
the reference never trains). A frozen group gets `set_to_zero`, which keeps no optimizer
state, so freezing the 637M-parameter encoder also saves its 5 GB of fp32 Adam moments on a 7B run.
Weight decay applies to matrices only (kernels, embeddings), not to biases or norm scales.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import optax

from qwen_audio_jax.errors import ConfigError


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

    def __post_init__(self):
        if self.learning_rate <= 0 or self.min_learning_rate < 0 or self.min_learning_rate > self.learning_rate:
            raise ConfigError("optim: need learning_rate > 0 and 0 <= min_learning_rate <= learning_rate.")
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps must be >= 0.")


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


def param_group(path: tuple[str, ...]) -> str:
    if path[:2] == ("audio_tower", "embed_positions"):
        return "frozen"  # the reference never trains it (requires_grad_(False))
    return {"audio_tower": "encoder", "multi_modal_projector": "projector"}.get(path[0], "lm")


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, learning-rate schedule). The optimizer expects the model's nested param dict."""
    lr = schedule(cfg, total_steps)

    def adamw(multiplier: float):
        scaled = lr if multiplier == 1.0 else (lambda step: lr(step) * multiplier)
        return optax.adamw(scaled, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=_decay_mask)  # fmt: skip

    groups = {
        "frozen": optax.set_to_zero(),
        "encoder": optax.set_to_zero() if cfg.freeze_audio_encoder else adamw(cfg.encoder_lr_multiplier),
        "projector": optax.set_to_zero() if cfg.freeze_projector else adamw(1.0),
        "lm": adamw(1.0),
    }
    labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: param_group(tuple(k.key for k in path)), params
    )
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    return optax.chain(*parts, optax.multi_transform(groups, labels)), lr


def _decay_mask(params):
    # Scanned layers stack a leading axis, so a stacked bias is 2-D: decide by the leaf's name, not its rank.
    return jax.tree_util.tree_map_with_path(
        lambda path, x: path[-1].key in ("kernel", "embedding"), params
    )
