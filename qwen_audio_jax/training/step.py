"""The jitted training step: policy log-probs, reference log-probs (outside the gradient), loss, AdamW update.

A batch holds `A` micro-batches (gradient accumulation: a `lax.scan` sums their gradients, one optimizer
update per step). DPO rows are [chosen_1..chosen_B, rejected_1..rejected_B]: one forward pass serves both, and
each clip is encoded once per pair (`clip_repeats=2`). SFT rows are the B chosen sequences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from qwen_audio_jax.model.logprobs import completion_logprobs
from qwen_audio_jax.model.lora import join
from qwen_audio_jax.training.loss import LossConfig, preference_loss, sft_loss
from qwen_audio_jax.training.specaugment import AugmentConfig, spec_augment

PARAMS_FINITE = "params_finite"  # a step output beside the metrics, not one of them (the loop pops it)


def all_finite(tree) -> jax.Array:
    """True when every float leaf of `tree` is finite: one fused reduction per leaf, in the step's program."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.bool_(True)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: optimizer steps taken
    params: Any  # fp32 master weights (with LoRA: the adapters only; the frozen base is a separate argument)
    opt_state: Any
    rng: jax.Array


@flax.struct.dataclass
class TrainBatch:
    """A micro-batches of B examples; K = 2 rows per example for DPO (chosen, rejected), 1 for SFT.

    Rows keep a separate K axis so that B can be split over the mesh (and over hosts) while the loss still
    sees [chosen_1..chosen_B, rejected_1..rejected_B] after the reshape to K*B rows.
    """

    tokens: jax.Array  # [A, K, B, T] int32, right-padded
    mask: jax.Array  # [A, K, B, T] int32
    completion_mask: jax.Array  # [A, K, B, T] int32
    pair_active: jax.Array  # [A, B] float32: 0 for padding pairs
    mel: jax.Array | None = None  # [A, C, M, F] float32, clips in pair order
    mel_lengths: jax.Array | None = None  # [A, C] int32
    ref_logps: jax.Array | None = None  # [A, K, B] fp32, precomputed reference log-probs (DPO only)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    loss: LossConfig
    frozen_encoder: bool = True
    frozen_projector: bool = False
    logprob_chunk: int = 128
    max_completion: int | None = None  # static completion-token bucket (lm_head on those positions only)
    augment: AugmentConfig = AugmentConfig()


def _rows(x):
    """[K, B, T] -> [K*B, T]: chosen rows, then rejected rows."""
    return x.reshape(-1, x.shape[-1])


def _logprobs(module, params, micro: TrainBatch, cfg: StepConfig, rngs=None):
    k = micro.tokens.shape[0]
    return completion_logprobs(
        module,
        params,
        _rows(micro.tokens),
        _rows(micro.mask),
        _rows(micro.completion_mask),
        micro.mel,
        micro.mel_lengths,
        chunk=cfg.logprob_chunk,
        max_completion=cfg.max_completion,
        right_padded=True,  # TrainBatch rows are right-padded: cuDNN flash attention on GPU
        rngs=rngs,
        clip_repeats=k,
        frozen_encoder=cfg.frozen_encoder,
        frozen_projector=cfg.frozen_projector,
    )


def step_totals(batch: TrainBatch) -> tuple[jax.Array, jax.Array]:
    """(active pairs, chosen completion tokens) of a whole step: the denominators every micro-batch's means use,
    so the micro-batches' losses and gradients sum to those of the step as one batch (token-weighted SFT, pair-
    weighted DPO), however the pairs and tokens fall into micro-batches."""
    counted = batch.completion_mask[:, 0, :, 1:] * batch.mask[:, 0, :, 1:]  # position p predicts token p + 1
    return batch.pair_active.sum(), (counted.sum(-1) * batch.pair_active).sum()


def batch_loss(module, params, micro: TrainBatch, ref_logps, cfg: StepConfig, totals=None, rngs=None):
    """(loss, metrics) of one micro-batch. ref_logps: [2B] reference log-probs (DPO) or None (SFT). totals: the
    step's `step_totals` (default: this micro-batch's own). rngs: LoRA dropout's ({"dropout": key}) or None."""
    preference = cfg.loss.is_preference
    pol = _logprobs(module, params, micro, cfg, rngs)
    if not preference:
        loss, metrics = sft_loss(pol.sum_logprobs, pol.num_tokens, micro.pair_active, totals)
        return loss, {**metrics, "tokens": pol.num_tokens.sum()}
    b = micro.pair_active.shape[0]
    split = lambda x: (x[:b], x[b:])  # noqa: E731
    (pi_c, pi_r), (ref_c, ref_r), (n_c, n_r) = split(pol.sum_logprobs), split(ref_logps), split(pol.num_tokens)
    loss, metrics = preference_loss(cfg.loss, pi_c, pi_r, ref_c, ref_r, n_c, n_r, micro.pair_active, totals)
    active = micro.pair_active
    count = jnp.maximum(active.sum() if totals is None else totals[0], 1.0)
    lg_c, lg_r = split(pol.mean_logits)
    metrics["logits/chosen"] = (lg_c * active).sum() / count
    metrics["logits/rejected"] = (lg_r * active).sum() / count
    metrics["tokens"] = pol.num_tokens.sum()
    return loss, metrics


def reference_logps(module, ref_params, micro: TrainBatch, cfg: StepConfig):
    """Reference log-probs [2B]: precomputed ones if the batch carries them, else a forward of the frozen copy."""
    if micro.ref_logps is not None:
        return micro.ref_logps.reshape(-1)
    return jax.lax.stop_gradient(_logprobs(module, ref_params, micro, cfg).sum_logprobs)


def reference_model(module, ref_params, base):
    """(module, params) of DPO's reference. Full training: the frozen copy `ref_params`. LoRA (`base` given):
    the same base weights with the adapters switched off (the module without its LoraSpec: no second copy of
    the model), or another model dir's weights (`ref_params`, unquantized) when reference.model names one."""
    if base is None:
        return module, ref_params
    if ref_params is None:
        return module.clone(lora=None), base
    return module.clone(lora=None, quantized=False), ref_params


def train_step(
    module,
    tx: optax.GradientTransformation,
    lr_fn: Callable,
    cfg: StepConfig,
    state: TrainState,
    batch: TrainBatch,
    ref_params=None,
    base=None,
) -> tuple[TrainState, dict]:
    """One optimizer step over the A micro-batches of `batch`. Donate `state`.

    base: LoRA's frozen base tree (model/lora.py); state.params then holds the adapters, the only leaves with
    gradients and optimizer state, and the forward runs over the two trees joined."""
    totals = step_totals(batch)
    full = (lambda p: p) if base is None else (lambda p: join(base, p))  # noqa: E731
    grad_fn = jax.value_and_grad(
        lambda p, micro, ref, rngs: batch_loss(module, full(p), micro, ref, cfg, totals, rngs), has_aux=True
    )
    preference = cfg.loss.is_preference
    ref_module, ref_params = reference_model(module, ref_params, base) if preference else (module, None)
    dropout = getattr(module, "lora", None) is not None and module.lora.dropout > 0

    rng, augment_key = jax.random.split(state.rng)
    dropout_key = jax.random.fold_in(augment_key, 1 << 30)  # (full runs never draw it: their keys are unchanged)

    def micro_step(grads_acc, xs):
        index, micro = xs
        if cfg.augment.spec_augment and micro.mel is not None:  # policy and frozen reference see the same masks
            key = jax.random.fold_in(augment_key, index)
            micro = micro.replace(mel=spec_augment(micro.mel, micro.mel_lengths, key, cfg.augment))
        # The reference forward runs before (outside) value_and_grad: no gradient, no saved activations.
        ref = reference_logps(ref_module, ref_params, micro, cfg) if preference else None
        rngs = {"dropout": jax.random.fold_in(dropout_key, index)} if dropout else None
        (_, metrics), grads = grad_fn(state.params, micro, ref, rngs)
        return jax.tree_util.tree_map(jnp.add, grads_acc, grads), metrics

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    n_micro = batch.tokens.shape[0]
    # One micro-batch: no scan. XLA:CPU runs the encoder's conv-kernel gradients much slower inside a loop body
    # (demo model, batch 8: 0.78 -> 0.47 s per step with the encoder trained); the arithmetic is the same.
    if n_micro == 1:
        grads, metrics = micro_step(zeros, (jnp.int32(0), jax.tree_util.tree_map(lambda x: x[0], batch)))
        metrics = jax.tree_util.tree_map(lambda v: v[None], metrics)
    else:
        grads, metrics = jax.lax.scan(micro_step, zeros, (jnp.arange(n_micro), batch))
    # Each micro-batch's loss and metrics are already divided by the step's counts: their sums are the step's.
    metrics = {k: v.sum() for k, v in metrics.items()}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = lr_fn(state.step)
    # A finite loss and gradient can still give non-finite weights (an update past float32's range); the loop
    # checks this flag before it saves the new state, so no checkpoint ever holds a NaN or an infinity.
    metrics[PARAMS_FINITE] = all_finite(params)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics
