"""The jitted generation steps as pure top-level functions: `prefill` and `decode_loop`.

`prefill` encodes the audio, merges it into the prompt, runs the decoder over the left-padded prompt while
writing the KV cache, and returns the initial `DecodeState`. `decode_loop` runs a `lax.while_loop` over many
tokens in one device call: select the next token, record it, and (unless every row is done) feed it back
through the decoder with the cache. Rows finish independently through a device-side `done` mask; the loop
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
    cache: KVCache  # k, v [L, B, S, K, H]
    cache_mask: jax.Array  # [B, S] bool: slots holding real tokens
    write_index: jax.Array  # int32: next cache slot (shared by all rows: prompts are left-padded)
    next_position: jax.Array  # [B] int32: RoPE position of the next token
    logits: jax.Array  # [B, V] fp32: logits for the next token
    tokens: jax.Array  # [B, N] int32: generated ids, pad after a row is done
    logprobs: jax.Array  # [B, N] fp32: model log-prob of each generated id (unprocessed logits)
    num_generated: jax.Array  # int32
    done: jax.Array  # [B] bool
    seen: jax.Array  # [B, V] bool: ids in the prompt or generated so far (repetition penalty)
    key: jax.Array


def _apply(model, params, method, *args):
    return model.apply({"params": params}, *args, method=method)


def prefill(
    model: Qwen2AudioForConditionalGeneration,
    params,
    tokens_BT: jax.Array,
    mask_BT: jax.Array,
    mel_CMA: jax.Array | None,
    mel_lengths_C: jax.Array | None,
    row_active_B: jax.Array,
    key: jax.Array,
    *,
    cache_len: int,
    max_new_tokens: int,
) -> DecodeState:
    """Prompt (and audio) -> DecodeState with the cache filled for slots [0, T)."""
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
    cache_mask = jnp.zeros((b, cache_len), bool).at[:, :t].set(valid)
    return DecodeState(
        cache=cache,
        cache_mask=cache_mask,
        write_index=jnp.asarray(t, jnp.int32),
        next_position=jnp.sum(mask_BT, axis=-1).astype(jnp.int32),
        logits=logits,
        tokens=jnp.zeros((b, max_new_tokens), jnp.int32),
        logprobs=jnp.zeros((b, max_new_tokens), jnp.float32),
        num_generated=jnp.asarray(0, jnp.int32),
        done=~row_active_B.astype(bool),
        seen=seen,
        key=key,
    )


def decode_loop(
    model: Qwen2AudioForConditionalGeneration,
    params,
    state: DecodeState,
    sampling: SamplingParams,
    stop_ids_S: jax.Array,
    pad_id: jax.Array,
    until: jax.Array,
) -> DecodeState:
    """Generates until every row is done or `until` tokens (<= N) exist. Donate `state`."""
    b, max_new = state.tokens.shape
    rows = jnp.arange(b)

    def cond(s: DecodeState):
        return (s.num_generated < until) & ~jnp.all(s.done)

    def forward(s: DecodeState, tok_B):
        cache_mask = s.cache_mask.at[:, s.write_index].set(True)
        embeds = _apply(model, params, "embed", tok_B[:, None])
        hidden, cache = _apply(
            model, params, "decode", embeds, s.next_position[:, None], cache_mask[:, None, :], s.cache, s.write_index
        )
        return cache, cache_mask, _apply(model, params, "logits", hidden[:, -1])

    def body(s: DecodeState):
        key, sub = jax.random.split(s.key)
        tok = select_next(s.logits, sub, sampling, s.seen, s.num_generated, stop_ids_S)
        tok = jnp.where(s.done, pad_id, tok)
        logp = jnp.take_along_axis(jax.nn.log_softmax(s.logits, axis=-1), tok[:, None], axis=-1)[:, 0]
        hit_stop = jnp.any(tok[:, None] == stop_ids_S[None, :], axis=-1)
        done = s.done | hit_stop | (s.num_generated + 1 >= max_new)
        # The last token of every row needs no forward pass: skip it when all rows just finished.
        cache, cache_mask, logits = jax.lax.cond(
            jnp.all(done), lambda s, t: (s.cache, s.cache_mask, s.logits), forward, s, tok
        )
        return s.replace(
            cache=cache,
            cache_mask=cache_mask,
            write_index=s.write_index + 1,
            next_position=s.next_position + 1,
            logits=logits,
            tokens=s.tokens.at[:, s.num_generated].set(tok),
            logprobs=s.logprobs.at[:, s.num_generated].set(jnp.where(s.done, 0.0, logp)),
            num_generated=s.num_generated + 1,
            done=done,
            seen=s.seen.at[rows, tok].set(True),
            key=key,
        )

    return jax.lax.while_loop(cond, body, state)
