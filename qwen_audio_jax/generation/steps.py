"""The jitted generation steps as pure top-level functions: `prefill` and `decode_loop`.

`prefill` encodes the audio, merges it into the prompt, runs the decoder over the left-padded prompt while
writing the KV cache, and selects the first new token. `decode_loop` runs a `lax.while_loop` over many tokens
in one device call: feed the last token through the decoder with the cache, select the next one, record it. Rows finish independently through a device-side `done` mask; the loop
exits early when all are done or when `until` tokens exist (so a host can also run it in chunks).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from qwen_audio_jax.generation.sampling import SamplingParams, select_next
from qwen_audio_jax.model.decoder import KVCache, causal_mask, positions_from_mask
from qwen_audio_jax.model.qwen2_audio import Qwen2AudioForConditionalGeneration


@flax.struct.dataclass
class DecodeState:
    cache: KVCache  # k, v [L, B, K, S, H]
    cache_mask: jax.Array  # [B, S] bool: slots holding real tokens
    write_index: jax.Array  # int32: cache slot of `last_token` (shared by all rows: prompts are left-padded)
    next_position: jax.Array  # [B] int32: RoPE position of `last_token`
    last_token: jax.Array  # [B] int32: the most recent generated id, not yet fed to the decoder
    tokens: jax.Array  # [B, N] int32: generated ids, pad after a row is done
    logprobs: jax.Array  # [B, N] fp32: model log-prob of each generated id (unprocessed logits); 0 if not asked
    num_generated: jax.Array  # int32
    done: jax.Array  # [B] bool
    seen: jax.Array  # [B, V] bool: ids in the prompt or generated so far (repetition penalty)
    key: jax.Array


@flax.struct.dataclass
class StopCriteria:
    stop_ids: jax.Array  # [S] int32 (padded with repeats)
    pad_id: jax.Array  # int32: written after a row is done


def _apply(model, params, method, *args):
    return model.apply({"params": params}, *args, method=method)


def _select_and_record(
    s: DecodeState, logits_BV, sampling: SamplingParams, stop: StopCriteria, with_logprobs: bool
) -> DecodeState:
    """Picks the next token from `logits_BV` and records it (tokens, log-prob if asked, done, seen).

    `with_logprobs` is static: the logsumexp is two more passes over [B, V] per step, skipped when unused."""
    b, max_new = s.tokens.shape
    key, sub = jax.random.split(s.key)
    tok = select_next(logits_BV, sub, sampling, s.seen, s.num_generated, stop.stop_ids)
    tok = jnp.where(s.done, stop.pad_id, tok)
    logprobs = s.logprobs
    if with_logprobs:
        picked = jnp.take_along_axis(logits_BV, tok[:, None], axis=-1)[:, 0]
        logp = picked - jax.nn.logsumexp(logits_BV, axis=-1)  # log_softmax at one index, without the [B, V] array
        logprobs = logprobs.at[:, s.num_generated].set(jnp.where(s.done, 0.0, logp))
    hit_stop = jnp.any(tok[:, None] == stop.stop_ids[None, :], axis=-1)
    return s.replace(
        last_token=tok,
        tokens=s.tokens.at[:, s.num_generated].set(tok),
        logprobs=logprobs,
        num_generated=s.num_generated + 1,
        done=s.done | hit_stop | (s.num_generated + 1 >= max_new),
        seen=s.seen.at[jnp.arange(b), tok].set(True),
        key=key,
    )


def prefill(
    model: Qwen2AudioForConditionalGeneration,
    params,
    tokens_BT: jax.Array,
    mask_BT: jax.Array,
    mel_CMA: jax.Array | None,
    mel_lengths_C: jax.Array | None,
    row_active_B: jax.Array,
    key: jax.Array,
    sampling: SamplingParams,
    stop: StopCriteria,
    cache_len: int,
    max_new_tokens: int,
    with_logprobs: bool = True,
) -> DecodeState:
    """Prompt (and audio) -> DecodeState with the cache filled for slots [0, T) and the first token chosen."""
    b, t = tokens_BT.shape
    embeds = _apply(model, params, "embed", tokens_BT, mel_CMA, mel_lengths_C)
    positions = positions_from_mask(mask_BT)
    slots = jnp.broadcast_to(jnp.arange(t), (b, t))
    cache = KVCache.zeros(model.config.decoder, b, cache_len, model.dtype)
    hidden, cache = _apply(model, params, "decode", embeds, positions, causal_mask(mask_BT, slots), cache, 0)
    logits = _apply(model, params, "logits", hidden[:, -1])  # left padding: the last slot is the last real token
    vocab = logits.shape[-1]
    valid = mask_BT.astype(bool)
    # Padding is not "seen": out-of-range index `vocab` is dropped by the scatter.
    seen = jnp.zeros((b, vocab), bool).at[jnp.arange(b)[:, None], jnp.where(valid, tokens_BT, vocab)].set(True, mode="drop")
    state = DecodeState(
        cache=cache,
        cache_mask=jnp.zeros((b, cache_len), bool).at[:, :t].set(valid),
        write_index=jnp.asarray(t, jnp.int32),
        next_position=jnp.sum(mask_BT, axis=-1).astype(jnp.int32),
        last_token=jnp.zeros((b,), jnp.int32),
        tokens=jnp.zeros((b, max_new_tokens), jnp.int32),
        logprobs=jnp.zeros((b, max_new_tokens), jnp.float32),
        num_generated=jnp.asarray(0, jnp.int32),
        done=~row_active_B.astype(bool),
        seen=seen,
        key=key,
    )
    return _select_and_record(state, logits, sampling, stop, with_logprobs)


def decode_loop(
    model: Qwen2AudioForConditionalGeneration,
    params,
    state: DecodeState,
    sampling: SamplingParams,
    stop: StopCriteria,
    until: jax.Array,
    with_logprobs: bool = True,
) -> DecodeState:
    """Generates until every row is done or `until` tokens (<= N) exist. Donate `state`.

    Each iteration feeds `last_token` through the decoder (one cache slot) and selects the next token, so no
    forward pass is spent after the last token. (A lax.cond that skipped that pass cost more than it saved:
    the branch's cache operands were copied every step.)
    """

    def cond(s: DecodeState):
        return (s.num_generated < until) & ~jnp.all(s.done)

    def body(s: DecodeState):
        cache_mask = s.cache_mask.at[:, s.write_index].set(True)
        embeds = _apply(model, params, "embed", s.last_token[:, None])
        hidden, cache = _apply(
            model, params, "decode", embeds, s.next_position[:, None], cache_mask[:, None, :], s.cache, s.write_index
        )
        logits = _apply(model, params, "logits", hidden[:, -1])
        s = s.replace(cache=cache, cache_mask=cache_mask, write_index=s.write_index + 1,
                      next_position=s.next_position + 1)  # fmt: skip
        return _select_and_record(s, logits, sampling, stop, with_logprobs)

    return jax.lax.while_loop(cond, body, state)
