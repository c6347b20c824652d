"""Preference losses with TRL's formulas and metric names (trl.DPOTrainer), plus SFT.

Inputs are per-pair summed completion log-probs (fp32): policy chosen/rejected, reference chosen/rejected,
and completion token counts. With h = (pi_c - pi_r) - (ref_c - ref_r):

    sigmoid  -logsigmoid(beta h) (1 - eps) - logsigmoid(-beta h) eps     (eps = label smoothing; the DPO paper)
    robust   (-logsigmoid(beta h) (1 - eps) + logsigmoid(-beta h) eps) / (1 - 2 eps)   (rDPO)
    hinge    relu(1 - beta h)                                            (SLiC)
    ipo      (h_avg - 1 / (2 beta))^2, h_avg from per-token (length-normalised) log-probs  (IPO)
    sft      -sum(pi_c) / sum(n_c) over the batch's real pairs            (TRL's nll_loss: token-averaged)

A run may weight several (`types`, `weights`), as TRL's `loss_type=[...]` with `loss_weights`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from qwen_audio_jax.errors import ConfigError

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "sft")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    types: tuple[str, ...] = ("sigmoid",)
    weights: tuple[float, ...] = (1.0,)
    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self):
        bad = [t for t in self.types if t not in LOSS_TYPES]
        if bad:
            raise ConfigError(f"unknown loss type(s) {bad}; choose from {list(LOSS_TYPES)}.")
        if len(self.weights) != len(self.types):
            raise ConfigError(
                f"loss.weights {list(self.weights)} must have one weight per loss type {list(self.types)}."
            )
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError("loss.label_smoothing must be in [0, 0.5).")
        if self.beta <= 0:
            raise ConfigError("loss.beta must be > 0.")

    @property
    def is_preference(self) -> bool:
        """True when a loss compares chosen and rejected completions against a reference (DPO and its
        relatives); False for pure SFT (chosen completions only, no reference). The one name for it."""
        return any(t != "sft" for t in self.types)


def per_pair_losses(kind: str, pi_c, pi_r, ref_c, ref_r, n_c, n_r, beta: float, eps: float):
    """Loss per pair [B] for one preference loss type (all inputs [B], fp32); `sft` is a batch term
    (`preference_loss`)."""
    h = (pi_c - pi_r) - (ref_c - ref_r)
    if kind == "sigmoid":
        return -jax.nn.log_sigmoid(beta * h) * (1 - eps) - jax.nn.log_sigmoid(-beta * h) * eps
    if kind == "robust":
        return (-jax.nn.log_sigmoid(beta * h) * (1 - eps) + jax.nn.log_sigmoid(-beta * h) * eps) / (1 - 2 * eps)
    if kind == "hinge":
        return jax.nn.relu(1 - beta * h)
    if kind == "ipo":
        n_c, n_r = jnp.maximum(n_c, 1.0), jnp.maximum(n_r, 1.0)
        h_avg = (pi_c / n_c - pi_r / n_r) - (ref_c / n_c - ref_r / n_r)
        return (h_avg - 1 / (2 * beta)) ** 2
    raise ConfigError(f"unknown loss type {kind!r}")


def preference_loss(cfg: LossConfig, pi_c, pi_r, ref_c, ref_r, n_c, n_r, active, totals=None):
    """(mean loss over active pairs, metrics dict of TRL names). active: [B] 1.0 for real pairs.

    totals: (active pairs, chosen completion tokens) of the whole step when this is one of several micro-batches:
    the means then divide by the step's counts, so summing the micro-batches' losses (and gradients) gives the
    loss of the step as one batch (default: this batch's own counts)."""
    active = active.astype(jnp.float32)
    pairs, tokens = totals if totals is not None else (active.sum(), (n_c * active).sum())
    count = jnp.maximum(pairs, 1.0)
    loss = jnp.float32(0.0)
    for kind, weight in zip(cfg.types, cfg.weights):
        if kind == "sft":  # TRL's nll_loss: cross-entropy averaged over every chosen completion token of the batch
            loss += weight * -(pi_c * active).sum() / jnp.maximum(tokens, 1.0)
        else:
            losses = per_pair_losses(kind, pi_c, pi_r, ref_c, ref_r, n_c, n_r, cfg.beta, cfg.label_smoothing)
            loss += weight * (losses * active).sum() / count
    chosen_rewards = cfg.beta * (pi_c - ref_c)
    rejected_rewards = cfg.beta * (pi_r - ref_r)

    def mean(x):
        return (x * active).sum() / count

    metrics = {
        "loss": loss,
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/accuracies": mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        "rewards/margins": mean(chosen_rewards - rejected_rewards),
        "logps/chosen": mean(pi_c),
        "logps/rejected": mean(pi_r),
    }
    return loss, metrics


def sft_loss(logp_sum, n_tokens, active, totals=None):
    """Token-weighted mean NLL over the batch (what a per-token cross-entropy averages to). totals: the step's
    (active pairs, tokens) when this is one micro-batch of several (as in `preference_loss`)."""
    active = active.astype(jnp.float32)
    pairs, tokens = totals if totals is not None else (active.sum(), (n_tokens * active).sum())
    loss = -(logp_sum * active).sum() / jnp.maximum(tokens, 1.0)
    return loss, {"loss": loss, "logps/chosen": (logp_sum * active).sum() / jnp.maximum(pairs, 1.0)}
