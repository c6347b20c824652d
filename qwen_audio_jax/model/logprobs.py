"""Sequence log-probabilities of completion tokens: the quantity `score` reports and DPO optimises.

The lm_head + log_softmax run over chunks of positions inside a rematerialised scan, so the [B, T, V] fp32
logits (8 x 2048 x 156032 x 4 bytes = 10 GB for the 7B vocab) never exist at once, in the forward or the
backward pass. Log-probs are fp32 whatever the compute dtype (docs/decisions.md §7).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class CompletionLogprobs:
    sum_logprobs: jax.Array  # [B] sum over completion tokens of log p(token | prefix)
    num_tokens: jax.Array  # [B] completion tokens counted
    mean_logits: jax.Array  # [B] mean over completion positions of the mean logit over the vocab (TRL metric)
    token_logprobs: jax.Array  # [B, T] per-token log-prob at the position of the token (0 where not counted)


def completion_logprobs(
    module,
    params,
    tokens_BT: jax.Array,
    mask_BT: jax.Array,
    completion_mask_BT: jax.Array,
    mel_CMA: jax.Array | None = None,
    mel_lengths_C: jax.Array | None = None,
    *,
    chunk: int = 128,
    max_completion: int | None = None,
    right_padded: bool = False,
    rngs: dict | None = None,
    **embed_options,
) -> CompletionLogprobs:
    """Log-probs of the tokens where completion_mask is 1, each predicted from all tokens before it.

    Works for left or right padding (positions come from the mask); T need not be a multiple of `chunk`.
    max_completion: a static bound K on completion tokens per row. The lm_head then runs on the K completion
    positions only (gathered, in order) instead of all T: with a 156k vocab it dominates the step, and
    prompts (audio included) are usually most of T. token_logprobs is then [B, K] in completion order.
    right_padded: the rows are right-padded (attention may then run as cuDNN's causal + lengths form on GPU).
    rngs: the forward's rngs ({"dropout": key}: LoRA dropout in training; None: deterministic).
    embed_options: clip_repeats / frozen_encoder / frozen_projector (see the model's `embed`).
    """
    variables = {"params": params}
    b, t = tokens_BT.shape
    hidden, _ = module.apply(
        variables,
        tokens_BT,
        mask_BT,
        mel_CMA,
        mel_lengths_C,
        right_padded=right_padded,
        method="forward",
        rngs=rngs,
        **embed_options,
    )

    # Position p predicts token p + 1.
    targets = tokens_BT[:, 1:]
    weights = (completion_mask_BT[:, 1:] * mask_BT[:, 1:]).astype(jnp.float32)
    h = hidden[:, :-1]
    n = t - 1
    if max_completion is not None:
        # Stable sort puts the completion positions first, in order; the rest of the K slots get weight 0.
        order = jnp.argsort(weights <= 0, axis=-1, stable=True)[:, :max_completion]
        h = jnp.take_along_axis(h, order[..., None], axis=1)
        targets = jnp.take_along_axis(targets, order, axis=1)
        weights = jnp.take_along_axis(weights, order, axis=1)
        n = max_completion
    chunk = min(chunk, n)
    pad = (-n) % chunk
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    targets_p = jnp.pad(targets, ((0, 0), (0, pad)))
    nc = (n + pad) // chunk
    h_chunks = h.reshape(b, nc, chunk, -1).swapaxes(0, 1)
    t_chunks = targets_p.reshape(b, nc, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args):
        h_c, tgt_c = args
        logits = module.apply(variables, h_c, method="logits")  # [B, chunk, V] fp32
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, tgt_c[..., None], axis=-1)[..., 0]
        return picked - logz, jnp.mean(logits, axis=-1)

    logp_chunks, mean_logit_chunks = jax.lax.map(one_chunk, (h_chunks, t_chunks))
    logp = logp_chunks.swapaxes(0, 1).reshape(b, -1)[:, :n] * weights
    mean_logit = mean_logit_chunks.swapaxes(0, 1).reshape(b, -1)[:, :n]
    count = weights.sum(-1)
    # Align with the token positions (or keep completion order when positions were gathered).
    per_token = logp if max_completion is not None else jnp.pad(logp, ((0, 0), (1, 0)))
    return CompletionLogprobs(
        sum_logprobs=logp.sum(-1),
        num_tokens=count,
        mean_logits=(mean_logit * weights).sum(-1) / jnp.maximum(count, 1.0),
        token_logprobs=per_token,
    )


@flax.struct.dataclass
class SequenceScores:
    sum_logprobs: jax.Array  # [B] fp32
    num_tokens: jax.Array  # [B] completion tokens counted


def score_from_buffer(
    module,
    params,
    features_ND: jax.Array,
    tokens_BT: jax.Array,
    mask_BT: jax.Array,
    completion_mask_BT: jax.Array,
    audio_offset_B: jax.Array,
    rope_index_B: jax.Array,
    *,
    chunk: int = 128,
) -> SequenceScores:
    """Summed log-probs of the completion tokens of right-padded rows whose audio slots read the feature buffer
    (the `score` job: encoder calls fill the buffer first, generation/steps.py `encode`).

    Forward only: the lm_head runs over the completion positions `chunk` at a time in a loop whose trip count
    is the batch's longest completion, so one program serves every completion length at this T. rope_index_B:
    each row's RoPE table row (v1's dynamic NTK from the row's own length; 0 otherwise)."""
    variables = {"params": params}
    embeds = module.apply(variables, tokens_BT, features_ND, audio_offset_B, method="embed_buffered")
    hidden = module.apply(variables, embeds, mask_BT, rope_index_B, True, method="forward_embeds")
    b, t = tokens_BT.shape
    weights = (completion_mask_BT[:, 1:] * mask_BT[:, 1:]).astype(jnp.float32)  # position p predicts p + 1
    order = jnp.argsort(weights <= 0, axis=-1, stable=True)  # completion positions first, in order
    n = t - 1
    pad = (-n) % chunk
    h = jnp.pad(jnp.take_along_axis(hidden[:, :-1], order[..., None], axis=1), ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(jnp.take_along_axis(tokens_BT[:, 1:], order, axis=1), ((0, 0), (0, pad)))
    w = jnp.pad(jnp.take_along_axis(weights, order, axis=1), ((0, 0), (0, pad)))
    count = weights.sum(-1)

    def one(i, total):
        h_c = jax.lax.dynamic_slice_in_dim(h, i * chunk, chunk, axis=1)
        tgt = jax.lax.dynamic_slice_in_dim(targets, i * chunk, chunk, axis=1)
        w_c = jax.lax.dynamic_slice_in_dim(w, i * chunk, chunk, axis=1)
        logits = module.apply(variables, h_c, method="logits")  # [B, chunk, V] fp32
        picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        return total + ((picked - jax.nn.logsumexp(logits, axis=-1)) * w_c).sum(-1)

    chunks = (jnp.max(count).astype(jnp.int32) + chunk - 1) // chunk
    return SequenceScores(jax.lax.fori_loop(0, chunks, one, jnp.zeros((b,), jnp.float32)), count)
