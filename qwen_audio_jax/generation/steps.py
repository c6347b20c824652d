"""The jitted generation steps as pure functions over explicit state: prefill, insert, decode (JetStream's
prefill / insert / generate pattern).

* `prefill` runs P new requests (right-padded to a length bucket, their clips to a frame bucket) through the
  cache-free forward pass, returns every layer's keys/values and each row's first token;
* `insert` writes those into free slots of the engine's `SlotState` (donated), leaving the others untouched;
* `decode` runs a `lax.while_loop` of up to `chunk` steps over all B slots, each slot at its own depth, and
  returns to the host early when a slot finishes while requests are waiting (`stop_on_free`).
Rows are independent: a slot's tokens do not depend on what the other slots hold.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from qwen_audio_jax.config import DecoderConfig
from qwen_audio_jax.generation.sampling import SamplingParams, select_next, split_keys
from qwen_audio_jax.model.decoder import KVCache

NO_TOKEN = -1  # in decode's per-chunk output: the slot produced nothing at that step


@flax.struct.dataclass
class StopCriteria:
    stop_ids: jax.Array  # [S] int32 (padded with repeats to a fixed count)
    pad_id: jax.Array  # int32: fed to finished slots


@flax.struct.dataclass
class SlotState:
    """B decode slots. A slot with done=True is finished or empty; its entries are ignored."""

    cache: KVCache  # k, v [L, B, K, S, H]
    lengths: jax.Array  # [B] int32: cache entries in use = RoPE position and cache entry of `last_token`
    rope_index: jax.Array  # [B] int32: the slot's RoPE table row (v1's NTK alpha, chosen at prefill)
    last_token: jax.Array  # [B] int32: the newest token, not yet fed to the decoder
    num_generated: jax.Array  # [B] int32
    max_new: jax.Array  # [B] int32: the request's token budget
    done: jax.Array  # [B] bool
    seen: jax.Array  # [B, V] bool: ids of the prompt and generated text (repetition penalty)
    keys: jax.Array  # [B, 2] uint32: each slot's own PRNG key
    sampling: SamplingParams  # [B] each


@flax.struct.dataclass
class Prefilled:
    """P prefilled rows, ready to insert. Padding rows have length 0 and done=True."""

    k: jax.Array  # [L, P, K, T, H]
    v: jax.Array
    lengths: jax.Array  # [P] prompt lengths
    rope_index: jax.Array  # [P]
    first_token: jax.Array  # [P]
    first_logprob: jax.Array  # [P] model log-prob of the first token (0 when not asked)
    done: jax.Array  # [P]
    seen: jax.Array  # [P, V]
    keys: jax.Array  # [P, 2]
    max_new: jax.Array  # [P]
    sampling: SamplingParams  # [P]


def empty_state(config: DecoderConfig, batch: int, cache_len: int, dtype) -> SlotState:
    """All slots empty (done), caches zero."""
    zeros = jnp.zeros((batch,), jnp.int32)
    return SlotState(
        cache=KVCache.zeros(config, batch, cache_len, dtype),
        lengths=zeros,
        rope_index=zeros,
        last_token=zeros,
        num_generated=zeros,
        max_new=jnp.ones((batch,), jnp.int32),
        done=jnp.ones((batch,), bool),
        seen=jnp.zeros((batch, config.vocab_size), bool),
        keys=jnp.zeros((batch, 2), jnp.uint32),
        sampling=SamplingParams(
            temperature=jnp.zeros((batch,), jnp.float32),
            top_k=zeros,
            top_p=jnp.ones((batch,), jnp.float32),
            repetition_penalty=jnp.ones((batch,), jnp.float32),
            min_new_tokens=zeros,
        ),
    )


def grow(state: SlotState, cache_len: int) -> SlotState:
    """The same slots with a longer cache (new entries zero)."""
    pad = ((0, 0), (0, 0), (0, 0), (0, cache_len - state.cache.k.shape[3]), (0, 0))
    return state.replace(cache=KVCache(jnp.pad(state.cache.k, pad), jnp.pad(state.cache.v, pad)))


def _logprob(logits_BV, tok_B):
    """log_softmax at one index per row, without materialising the [B, V] log-probs."""
    return jnp.take_along_axis(logits_BV, tok_B[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(logits_BV, axis=-1)


def _is_stop(tok_B, stop: StopCriteria):
    return jnp.any(tok_B[:, None] == stop.stop_ids[None, :], axis=-1)


def prefill(
    module,
    params,
    tokens_PT: jax.Array,
    lengths_P: jax.Array,
    mel_CMA: jax.Array | None,
    mel_lengths_C: jax.Array | None,
    rope_index_P: jax.Array,
    keys_P2: jax.Array,
    sampling: SamplingParams,
    max_new_P: jax.Array,
    stop: StopCriteria,
    with_logprobs: bool,
) -> Prefilled:
    """Right-padded prompts (and their clips) -> their keys/values and first tokens. `module` is built with
    return_kv=True; `with_logprobs` is static."""
    p, t = tokens_PT.shape
    mask = jnp.arange(t)[None, :] < lengths_P[:, None]
    hidden, (k, v) = module.apply(
        {"params": params}, tokens_PT, mask, mel_CMA, mel_lengths_C, rope_index_P, method="forward"
    )
    last = hidden[jnp.arange(p), jnp.maximum(lengths_P - 1, 0)]  # each row's last real token
    logits = module.apply({"params": params}, last, method="logits")
    vocab = logits.shape[-1]
    # Padding is not "seen": the out-of-range index `vocab` is dropped by the scatter.
    seen = (
        jnp.zeros((p, vocab), bool).at[jnp.arange(p)[:, None], jnp.where(mask, tokens_PT, vocab)].set(True, mode="drop")
    )
    keys, draw = split_keys(keys_P2)
    tok = select_next(logits, draw, sampling, seen, jnp.zeros((p,), jnp.int32), stop.stop_ids)
    active = lengths_P > 0
    tok = jnp.where(active, tok, stop.pad_id)
    return Prefilled(
        k=k.astype(module.dtype),
        v=v.astype(module.dtype),
        lengths=lengths_P,
        rope_index=rope_index_P,
        first_token=tok,
        first_logprob=_logprob(logits, tok) if with_logprobs else jnp.zeros((p,), jnp.float32),
        done=~active | _is_stop(tok, stop) | (max_new_P <= 1),
        seen=seen.at[jnp.arange(p), tok].set(True),
        keys=keys,
        max_new=max_new_P,
        sampling=sampling,
    )


def insert(state: SlotState, pre: Prefilled, slots_P: jax.Array) -> SlotState:
    """Writes the prefilled rows into slots `slots_P` (an index >= B drops the row). Donate `state`."""
    t = pre.k.shape[3]

    def put(dst, src):
        return dst.at[slots_P].set(src, mode="drop")

    cache = KVCache(
        state.cache.k.at[:, slots_P, :, :t, :].set(pre.k, mode="drop"),
        state.cache.v.at[:, slots_P, :, :t, :].set(pre.v, mode="drop"),
    )
    return SlotState(
        cache=cache,
        lengths=put(state.lengths, pre.lengths),
        rope_index=put(state.rope_index, pre.rope_index),
        last_token=put(state.last_token, pre.first_token),
        num_generated=put(state.num_generated, jnp.ones_like(pre.lengths)),
        max_new=put(state.max_new, pre.max_new),
        done=put(state.done, pre.done),
        seen=put(state.seen, pre.seen),
        keys=put(state.keys, pre.keys),
        sampling=jax.tree_util.tree_map(put, state.sampling, pre.sampling),
    )


def decode(
    module,
    params,
    state: SlotState,
    stop: StopCriteria,
    stop_on_free: jax.Array,
    chunk: int,
    with_logprobs: bool,
) -> tuple[SlotState, jax.Array, jax.Array, jax.Array]:
    """Up to `chunk` (static) decode steps over every slot. Returns (state, tokens_BC, logprobs_BC, steps):
    column i holds each slot's token of step i (NO_TOKEN if the slot was done). Stops early when every slot is
    done, or, with stop_on_free, as soon as one more slot finishes. Donate `state`."""
    b = state.done.shape[0]
    s_len = state.cache.k.shape[3]
    done_at_start = state.done

    def cond(carry):
        i, s, _, _ = carry
        freed = jnp.any(s.done & ~done_at_start)
        return (i < chunk) & ~jnp.all(s.done) & ~(stop_on_free & freed)

    def body(carry):
        i, s, out_tokens, out_logprobs = carry
        key_mask = jnp.arange(s_len)[None, :] <= s.lengths[:, None]
        hidden, cache = module.apply(
            {"params": params},
            s.last_token,
            s.lengths,
            key_mask,
            s.cache,
            s.lengths,
            s.rope_index,
            method="decode_step",
        )
        logits = module.apply({"params": params}, hidden, method="logits")
        keys, draw = split_keys(s.keys)
        tok = select_next(logits, draw, s.sampling, s.seen, s.num_generated, stop.stop_ids)
        live = ~s.done
        tok = jnp.where(live, tok, stop.pad_id)
        num_generated = s.num_generated + live
        out_tokens = out_tokens.at[:, i].set(jnp.where(live, tok, NO_TOKEN))
        if with_logprobs:
            out_logprobs = out_logprobs.at[:, i].set(jnp.where(live, _logprob(logits, tok), 0.0))
        s = s.replace(
            cache=cache,
            lengths=s.lengths + live,
            last_token=tok,
            num_generated=num_generated,
            done=s.done | _is_stop(tok, stop) | (num_generated >= s.max_new),
            seen=s.seen.at[jnp.arange(b), tok].max(live),
            keys=jnp.where(live[:, None], keys, s.keys),
        )
        return i + 1, s, out_tokens, out_logprobs

    init = (
        jnp.asarray(0, jnp.int32),
        state,
        jnp.full((b, chunk), NO_TOKEN, jnp.int32),
        jnp.zeros((b, chunk), jnp.float32),
    )
    steps, state, tokens, logprobs = jax.lax.while_loop(cond, body, init)
    return state, tokens, logprobs, steps
