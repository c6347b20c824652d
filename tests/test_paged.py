"""The paged KV cache (model/paged.py) against plain attention over the same keys: pages in any order, rows of
different lengths, chunks that start mid-prompt, the null page, int8 pages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax.model import paged

L, D, NP, K, P, H = 2, 2, 12, 2, 4, 8  # layers, domains, pages per domain, kv heads, page size, head dim


def _reference(q_TNH, k_SKH, v_SKH, q_pos, n_keys, scale):
    """Causal softmax attention in float64 numpy: query at position q_pos[t] sees keys s <= q_pos[t], s < n_keys."""
    t, n, h = q_TNH.shape
    g = n // k_SKH.shape[1]
    out = np.zeros((t, n, h))
    for i in range(t):
        for head in range(n):
            kv = head // g
            s = np.arange(k_SKH.shape[0])
            ok = (s <= q_pos[i]) & (s < n_keys)
            scores = (k_SKH[ok, kv] @ q_TNH[i, head]) * scale
            p = np.exp(scores - scores.max())
            out[i, head] = (p / p.sum()) @ v_SKH[ok, kv]
    return out


@pytest.mark.parametrize("int8", [False, True])
def test_write_then_attend_equals_attention_over_the_rows_keys(int8):
    rng = np.random.default_rng(0)
    n_heads = 4
    pool = paged.PagedKV.zeros(L, D, NP, K, P, H, jnp.float32, int8)
    # Row 0 (domain 0): 13 tokens in pages 5, 2, 9, 1 (out of order). Row 1 (domain 1): 6 tokens in pages 3, 4.
    tables = np.zeros((2, 5), np.int32)
    tables[0, :4] = [5, 2, 9, 1]
    tables[1, :2] = [3, 4]
    lengths = [13, 6]
    keys = [rng.standard_normal((n, K, H)).astype(np.float32) for n in lengths]
    values = [rng.standard_normal((n, K, H)).astype(np.float32) for n in lengths]
    layer = 1
    # Written in two calls per row: the first 5 tokens, then the rest (right-padded to T = 8).
    for start, stop in ((0, 5), (5, 13)):
        t = 8
        k_RKTH = np.zeros((2, K, t, H), np.float32)
        v_RKTH = np.zeros((2, K, t, H), np.float32)
        live = np.zeros((2, t), bool)
        for r in range(2):
            n = max(0, min(stop, lengths[r]) - start)
            k_RKTH[r, :, :n] = keys[r][start : start + n].transpose(1, 0, 2)
            v_RKTH[r, :, :n] = values[r][start : start + n].transpose(1, 0, 2)
            live[r, :n] = True
        refs = paged.PageRefs(jnp.arange(2), jnp.asarray(tables), jnp.asarray([start, start]), jnp.asarray(live))
        pool = paged.write(pool, layer, refs, jnp.asarray(k_RKTH), jnp.asarray(v_RKTH))
    # Queries: the last 3 positions of each row (a chunk starting mid-prompt; causal inside it).
    q = rng.standard_normal((2, 3, n_heads, H)).astype(np.float32)
    starts = np.asarray([10, 3])
    refs = paged.PageRefs(jnp.arange(2), jnp.asarray(tables), jnp.asarray(starts), jnp.ones((2, 3), bool))
    got = paged.attend_pages(jnp.asarray(q), pool, layer, refs, jnp.asarray(lengths), H**-0.5)
    for r in range(2):
        k, v = keys[r], values[r]
        if int8:  # the reference sees what an int8 page holds: each token's head rounded at its absmax / 127
            k, v = (np.round(x / (s := np.abs(x).max(-1, keepdims=True) / 127)) * s for x in (k, v))
        want = _reference(q[r], k, v, starts[r] + np.arange(3), lengths[r], H**-0.5)
        np.testing.assert_allclose(np.asarray(got[r]), want, atol=2e-5, rtol=0)
    # Padding tokens and finished rows wrote only the null page; the other layer was never touched.
    assert np.all(np.asarray(pool.k[0]) == 0)
    used = {(0, p) for p in (5, 2, 9, 1)} | {(1, 3), (1, 4)}
    for d in range(D):
        for p in range(1, NP):
            if (d, p) not in used:
                assert np.all(np.asarray(pool.k[layer, d, p]) == 0), (d, p)


def test_int8_pages_round_each_token_and_head_to_its_own_scale():
    """The int8 write rounds every (token, head) vector at its own absmax / 127: the error is at most half a step."""
    rng = np.random.default_rng(1)
    pool = paged.PagedKV.zeros(1, 1, 3, K, P, H, jnp.float32, True)
    x = (rng.standard_normal((1, K, P, H)) * rng.uniform(0.01, 30, size=(1, K, P, 1))).astype(np.float32)
    refs = paged.PageRefs(jnp.zeros(1, jnp.int32), jnp.asarray([[2]]), jnp.zeros(1, jnp.int32), jnp.ones((1, P), bool))
    pool = paged.write(pool, 0, refs, jnp.asarray(x), jnp.asarray(x))
    k, _ = paged._page(pool, 0, jnp.zeros(1, jnp.int32), jnp.asarray([2]), jnp.float32)
    step = np.abs(x).max(-1, keepdims=True) / 127
    err = np.abs(np.asarray(k) - x)
    assert np.all(err <= step / 2 + 1e-6) and err.max() > 0


def test_rows_past_their_keys_read_the_null_page():
    """A row with fewer keys than the longest row reads page 0 for the missing pages (one cached page), and its
    result equals attention over its own keys."""
    rng = np.random.default_rng(2)
    pool = paged.PagedKV.zeros(1, 1, 8, K, P, H, jnp.float32, False)
    pool = pool.replace(k=jnp.asarray(rng.standard_normal(pool.k.shape), jnp.float32))
    pool = pool.replace(v=jnp.asarray(rng.standard_normal(pool.v.shape), jnp.float32))
    table = jnp.asarray([[4, 6, 7], [3, 0, 0]])
    q = rng.standard_normal((2, 1, K, H)).astype(np.float32)
    n_keys = np.asarray([11, 3])
    refs = paged.PageRefs(jnp.zeros(2, jnp.int32), table, jnp.asarray(n_keys - 1), jnp.ones((2, 1), bool))
    got = jax.jit(paged.attend_pages, static_argnums=(5,))(jnp.asarray(q), pool, 0, refs, jnp.asarray(n_keys), H**-0.5)
    pages = np.asarray(pool.k[0, 0]), np.asarray(pool.v[0, 0])
    for r in range(2):
        ids = np.asarray(table[r])
        k = np.concatenate([pages[0][p].transpose(1, 0, 2) for p in ids])  # [S, K, H]
        v = np.concatenate([pages[1][p].transpose(1, 0, 2) for p in ids])
        want = _reference(q[r], k, v, [n_keys[r] - 1], n_keys[r], H**-0.5)
        np.testing.assert_allclose(np.asarray(got[r]), want, atol=2e-5, rtol=0)
