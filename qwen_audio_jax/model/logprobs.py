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
    **embed_options,
) -> CompletionLogprobs:
    """Log-probs of the tokens where completion_mask is 1, each predicted from all tokens before it.

    Works for left or right padding (positions come from the mask); T need not be a multiple of `chunk`.
    max_completion: a static bound K on completion tokens per row. The lm_head then runs on the K completion
    positions only (gathered, in order) instead of all T: with a 156k vocab it dominates the step, and
    prompts (audio included) are usually most of T. token_logprobs is then [B, K] in completion order.
    embed_options: clip_repeats / frozen_encoder / frozen_projector (see the model's `embed`).
    """
    variables = {"params": params}
    b, t = tokens_BT.shape
    hidden, _ = module.apply(variables, tokens_BT, mask_BT, mel_CMA, mel_lengths_C, method="forward", **embed_options)

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
