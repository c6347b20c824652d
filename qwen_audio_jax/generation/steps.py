"""The jitted generation steps as pure functions over explicit state. Each compiles once per static shape, and
none of the shapes depends on the corpus (docs/decisions.md §5):

* `empty_state`: B empty slots and the page pool;
* `encode`: clips -> projected audio features, written into the feature buffer at given rows (one program per
  mel-frame bucket; a clip is always encoded alone, as the reference does);
* `prefill`: one chunk of R prompts (one per page domain) through the decoder, their keys/values written into
  the slots' pages and, for a prompt's last chunk, its first token sampled and its slot made live (one program
  per chunk-length bucket; a prompt's later chunks attend to its earlier ones through the pages);
* `decode`: up to `chunk` steps of every slot in one `lax.while_loop`, each slot at its own depth, returning
  early when a slot finishes while requests are waiting (one program).
Rows are independent: a slot's tokens never depend on what the other slots hold.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from qwen_audio_jax.generation.sampling import SamplingParams, request_keys, select_next, split_keys
from qwen_audio_jax.model.paged import PagedKV, PageRefs

NO_TOKEN = -1  # in decode's per-chunk output: the slot produced nothing at that step
TOP_LOGPROBS = 20  # the most alternatives a step reports (OpenAI's top_logprobs range: 0-20)


@flax.struct.dataclass
class StopCriteria:
    stop_ids: jax.Array  # [S] int32 (padded with repeats to a fixed count)
    pad_id: jax.Array  # int32: fed to finished slots


@flax.struct.dataclass
class SlotState:
    """B decode slots over D page domains (slot b is in domain b // (B / D)). A slot with done=True is finished,
    empty or still being prefilled; it reads and writes only the null page."""

    pool: PagedKV  # [L, D, NP, K, P, H]
    table: jax.Array  # [B, MP] int32: each slot's pages in order (page ids within its domain)
    lengths: jax.Array  # [B] int32: tokens in the cache = RoPE position of `last_token`
    rope_index: jax.Array  # [B] int32: the slot's RoPE table row (v1's NTK alpha, chosen at prefill)
    last_token: jax.Array  # [B] int32: the newest token, not yet fed to the decoder
    num_generated: jax.Array  # [B] int32
    max_new: jax.Array  # [B] int32: the request's token budget
    done: jax.Array  # [B] bool
    seen: jax.Array  # [B, V] bool: ids of the prompt and generated text (repetition penalty)
    keys: jax.Array  # [B, 2] uint32: each slot's own PRNG key
    sampling: SamplingParams  # [B] each


@flax.struct.dataclass
class PrefillRows:
    """R prompt chunks, row r in page domain r (padding rows: n_real 0 and slot B, which every write drops)."""

    tokens: jax.Array  # [R, T] int32, right-padded
    n_real: jax.Array  # [R] int32: real tokens of the chunk
    start: jax.Array  # [R] int32: the chunk's first position in its prompt
    final: jax.Array  # [R] bool: the prompt's last chunk (its first token is sampled, its slot made live)
    slot: jax.Array  # [R] int32
    table: jax.Array  # [R, MP] int32: the slot's pages
    audio_offset: jax.Array  # [R] int32: feature-buffer row of the chunk's first audio slot
    rope_index: jax.Array  # [R] int32
    seed: jax.Array  # [R] uint32: the request's seed
    stream: jax.Array  # [R] uint32: the request's stream (its id)
    max_new: jax.Array  # [R] int32
    sampling: SamplingParams  # [R] each


@flax.struct.dataclass
class Prefilled:
    """What the host needs back from a prefill call, per row."""

    first_token: jax.Array  # [R] int32 (meaningful for final rows)
    first_logprob: jax.Array  # [R] fp32: model log-prob of the first token
    done: jax.Array  # [R] bool: the request finished with its first token
    top_logprobs: jax.Array  # [R, TOP_LOGPROBS] fp32: the most likely tokens' log-probs (zeros unless asked)
    top_ids: jax.Array  # [R, TOP_LOGPROBS] int32: their ids, most likely first


@flax.struct.dataclass
class StepLogprobs:
    """decode's log-probs per slot and step: the chosen token's and, when asked, the TOP_LOGPROBS most likely."""

    chosen: jax.Array  # [B, C] fp32 (0 where the slot produced nothing)
    top: jax.Array  # [B, C, TOP_LOGPROBS] fp32 (zeros unless asked)
    top_ids: jax.Array  # [B, C, TOP_LOGPROBS] int32


def empty_state(vocab: int, batch: int, max_pages: int, pool_shape: tuple[int, ...], dtype, kv_int8: bool) -> SlotState:
    """All slots empty (done), every page zero. pool_shape: (L, D, NP, K, P, H)."""
    layers, domains, pages, kv_heads, size, head_dim = pool_shape
    zeros = jnp.zeros((batch,), jnp.int32)
    return SlotState(
        pool=PagedKV.zeros(layers, domains, pages, kv_heads, size, head_dim, dtype, kv_int8),
        table=jnp.zeros((batch, max_pages), jnp.int32),
        lengths=zeros,
        rope_index=zeros,
        last_token=zeros,
        num_generated=zeros,
        max_new=jnp.ones((batch,), jnp.int32),
        done=jnp.ones((batch,), bool),
        seen=jnp.zeros((batch, vocab), bool),
        keys=jnp.zeros((batch, 2), jnp.uint32),
        sampling=SamplingParams(
            temperature=jnp.zeros((batch,), jnp.float32),
            top_k=zeros,
            top_p=jnp.ones((batch,), jnp.float32),
            repetition_penalty=jnp.ones((batch,), jnp.float32),
            min_new_tokens=zeros,
        ),
    )


def encode(module, params, features_ND, mel_CMA, mel_lengths_C, offsets_C) -> jax.Array:
    """Encodes C clips (mel frames padded to one bucket A >= length + 2) and writes clip c's A/4 feature rows
    at row offsets_C[c] of the buffer (donated). A clip's rows past its own token count are scratch: the host
    places the next clip of the same prompt right after the valid ones, and leaves a clip's worth of rows free
    after each domain's region."""
    feats, _ = module.apply({"params": params}, mel_CMA, mel_lengths_C, method="encode_audio")
    feats = feats.astype(features_ND.dtype)
    for c in range(feats.shape[0]):
        features_ND = jax.lax.dynamic_update_slice(features_ND, feats[c], (offsets_C[c], 0))
    return features_ND


def _logprob(logits_BV, tok_B):
    """log_softmax at one index per row, without materialising the [B, V] log-probs."""
    return jnp.take_along_axis(logits_BV, tok_B[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(logits_BV, axis=-1)


def _top_logprobs(logits_BV, want):
    """The TOP_LOGPROBS largest log_softmax values of each row and their ids; zeros unless `want` (a traced bool:
    the same program either way, and the sort runs only when some request asked for alternatives)."""
    b = logits_BV.shape[0]

    def top(logits):
        values, ids = jax.lax.top_k(logits, TOP_LOGPROBS)
        return values - jax.nn.logsumexp(logits, axis=-1, keepdims=True), ids.astype(jnp.int32)

    def none(logits):
        return jnp.zeros((b, TOP_LOGPROBS), jnp.float32), jnp.zeros((b, TOP_LOGPROBS), jnp.int32)

    return jax.lax.cond(want, top, none, logits_BV.astype(jnp.float32))


def _is_stop(tok_B, stop: StopCriteria):
    return jnp.any(tok_B[:, None] == stop.stop_ids[None, :], axis=-1)


def prefill(module, params, state: SlotState, features_ND, rows: PrefillRows, stop: StopCriteria, want_top):
    """One chunk of R prompts into their slots' pages (state donated). `module` is built with cache_mode
    "prefill" (every row starts at 0: attention over the chunk itself) or "extend" (attention through the pages).
    want_top: a traced bool, compute the first token's top log-probs. Returns (state, Prefilled)."""
    r, t = rows.tokens.shape
    live = jnp.arange(t)[None, :] < rows.n_real[:, None]
    refs = PageRefs(domain=jnp.arange(r, dtype=jnp.int32), table=rows.table, start=rows.start, live=live)
    hidden, pool = module.apply(
        {"params": params},
        rows.tokens,
        features_ND,
        rows.audio_offset,
        rows.rope_index,
        state.pool,
        refs,
        method="prefill_chunk",
    )
    last = hidden[jnp.arange(r), jnp.maximum(rows.n_real - 1, 0)]  # each row's last real token
    logits = module.apply({"params": params}, last, method="logits")
    vocab = logits.shape[-1]
    slot = rows.slot
    # The prompt's tokens are "seen" (repetition penalty): a first chunk starts the slot's row afresh.
    fresh = jnp.where((rows.start == 0)[:, None], False, state.seen[jnp.minimum(slot, state.seen.shape[0] - 1)])
    seen = fresh.at[jnp.arange(r)[:, None], jnp.where(live, rows.tokens, vocab)].set(True, mode="drop")
    keys, draw = split_keys(request_keys(rows.seed, rows.stream))
    tok = select_next(logits, draw, rows.sampling, seen, jnp.zeros((r,), jnp.int32), stop.stop_ids)
    final = rows.final & (rows.n_real > 0)
    tok = jnp.where(final, tok, stop.pad_id)
    done = ~final | _is_stop(tok, stop) | (rows.max_new <= 1)
    # Slot updates: every real row writes its page table and seen row; a final row makes its slot live.
    real_slot = jnp.where(rows.n_real > 0, slot, state.done.shape[0])
    final_slot = jnp.where(final, slot, state.done.shape[0])

    def put(dst, src, at=final_slot):
        return dst.at[at].set(src, mode="drop")

    state = state.replace(
        pool=pool,
        table=put(state.table, rows.table, real_slot),
        seen=put(state.seen, seen.at[jnp.arange(r), jnp.where(final, tok, vocab)].set(True, mode="drop"), real_slot),
        lengths=put(state.lengths, rows.start + rows.n_real),
        rope_index=put(state.rope_index, rows.rope_index),
        last_token=put(state.last_token, tok),
        num_generated=put(state.num_generated, jnp.ones((r,), jnp.int32)),
        max_new=put(state.max_new, rows.max_new),
        done=put(state.done, done),
        keys=put(state.keys, keys),
        sampling=jax.tree_util.tree_map(put, state.sampling, rows.sampling),
    )
    top, top_ids = _top_logprobs(logits, want_top)
    return state, Prefilled(tok, _logprob(logits, tok), done, top, top_ids)


def decode(
    module,
    params,
    state: SlotState,
    stop: StopCriteria,
    stop_on_free: jax.Array,
    chunk: int,
    cancel_B: jax.Array,
    want_top: jax.Array,
) -> tuple[SlotState, jax.Array, StepLogprobs, jax.Array]:
    """Up to `chunk` (static) decode steps over every slot; `module` is built with cache_mode "extend".
    Returns (state, tokens_BC, StepLogprobs, steps): column i holds each slot's token of step i (NO_TOKEN if the
    slot was done). Stops early when every slot is done, or, with stop_on_free, as soon as one more slot
    finishes. cancel_B [B] bool: slots made done before the first step (cancelled requests); want_top: compute
    each step's top log-probs. Both are traced values, so neither ever recompiles. Donate `state`."""
    b = state.done.shape[0]
    domains = state.pool.k.shape[1]
    domain = jnp.arange(b, dtype=jnp.int32) // (b // domains)
    state = state.replace(done=state.done | cancel_B)
    done_at_start = state.done

    def cond(carry):
        i, s, _, _ = carry
        freed = jnp.any(s.done & ~done_at_start)
        return (i < chunk) & ~jnp.all(s.done) & ~(stop_on_free & freed)

    def body(carry):
        i, s, out_tokens, out = carry
        live = ~s.done
        refs = PageRefs(domain=domain, table=s.table, start=s.lengths, live=live[:, None])
        hidden, pool = module.apply({"params": params}, s.last_token, s.rope_index, s.pool, refs, method="decode_step")
        logits = module.apply({"params": params}, hidden, method="logits")
        keys, draw = split_keys(s.keys)
        tok = select_next(logits, draw, s.sampling, s.seen, s.num_generated, stop.stop_ids)
        tok = jnp.where(live, tok, stop.pad_id)
        num_generated = s.num_generated + live
        out_tokens = out_tokens.at[:, i].set(jnp.where(live, tok, NO_TOKEN))
        top, top_ids = _top_logprobs(logits, want_top)
        out = StepLogprobs(
            out.chosen.at[:, i].set(jnp.where(live, _logprob(logits, tok), 0.0)),
            out.top.at[:, i].set(top),
            out.top_ids.at[:, i].set(top_ids),
        )
        s = s.replace(
            pool=pool,
            lengths=s.lengths + live,
            last_token=tok,
            num_generated=num_generated,
            done=s.done | _is_stop(tok, stop) | (num_generated >= s.max_new),
            seen=s.seen.at[jnp.arange(b), tok].max(live),
            keys=jnp.where(live[:, None], keys, s.keys),
        )
        return i + 1, s, out_tokens, out

    init = (
        jnp.asarray(0, jnp.int32),
        state,
        jnp.full((b, chunk), NO_TOKEN, jnp.int32),
        StepLogprobs(
            jnp.zeros((b, chunk), jnp.float32),
            jnp.zeros((b, chunk, TOP_LOGPROBS), jnp.float32),
            jnp.zeros((b, chunk, TOP_LOGPROBS), jnp.int32),
        ),
    )
    steps, state, tokens, logprobs = jax.lax.while_loop(cond, body, init)
    return state, tokens, logprobs, steps
