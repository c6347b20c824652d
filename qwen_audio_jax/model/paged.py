"""The paged KV cache: every slot's keys and values live in fixed-size pages of one pool (vLLM's paged
attention, in plain XLA), so the compiled programs never depend on a sequence or cache length and memory is
shared by whatever requests are running (docs/decisions.md §4).

    pool.k, pool.v   [L, D, NP, K, P, H]   D page domains (the engine's prefill rows: one per batch shard and
                                           process), NP pages of P tokens each, K kv heads, head dim H
    int8 pools add   k_scale, v_scale [L, D, NP, K, P] fp32: one absmax scale per token and head

A row of a call (a slot, or a prompt being prefilled) names its domain and its pages in order (`PageRefs`); token
t of the row lives in page `table[t // P]` at offset `t % P`. Page 0 of every domain is the null page: padding
tokens and finished slots write there, and pages past a row's length are read from there, so a short row reads
one page that stays in cache instead of a long row's pages.

Attention over pages (`attend_pages`) walks them P tokens at a time with an online softmax (flash-decoding), up
to the longest row of the call: it reads what the rows hold, never a whole cache bucket.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from qwen_audio_jax.model.attention import MASK_VALUE


@flax.struct.dataclass
class PagedKV:
    k: jax.Array  # [L, D, NP, K, P, H] compute dtype, or int8
    v: jax.Array
    k_scale: jax.Array | None = None  # [L, D, NP, K, P] fp32 (int8 pools only)
    v_scale: jax.Array | None = None

    @property
    def page_size(self) -> int:
        return self.k.shape[4]

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    @classmethod
    def zeros(cls, layers: int, domains: int, pages: int, kv_heads: int, page_size: int, head_dim: int, dtype, int8):
        shape = (layers, domains, pages, kv_heads, page_size, head_dim)
        if not int8:
            return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
        scale = jnp.zeros(shape[:-1], jnp.float32)
        return cls(jnp.zeros(shape, jnp.int8), jnp.zeros(shape, jnp.int8), scale, scale)


def bytes_per_token(layers: int, kv_heads: int, head_dim: int, itemsize: int, int8: bool) -> int:
    """Pool bytes one token takes (keys and values of every layer; int8 adds its fp32 scales)."""
    if int8:
        return 2 * layers * kv_heads * (head_dim + 4)
    return 2 * layers * kv_heads * head_dim * itemsize


@flax.struct.dataclass
class PageRefs:
    """Where the R rows of one call live in the pool."""

    domain: jax.Array  # [R] int32
    table: jax.Array  # [R, MP] int32: the row's pages in order (0, the null page, where none is assigned)
    start: jax.Array  # [R] int32: position of the call's first token in the row (tokens already in the pool)
    live: jax.Array  # [R, T] bool: real tokens of the call (the others write to the null page)


def _quantize(x_RTKH):
    """int8 values and fp32 absmax scales per (row, token, head)."""
    x = x_RTKH.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x), axis=-1) / 127.0
    q = jnp.round(x / jnp.where(scale == 0, 1.0, scale)[..., None])
    return jnp.clip(q, -127, 127).astype(jnp.int8), scale


def write(pool: PagedKV, layer, refs: PageRefs, k_RKTH: jax.Array, v_RKTH: jax.Array) -> PagedKV:
    """Writes the call's new keys/values (token t of row r at position start[r] + t) into layer `layer`."""
    r, _, t, _ = k_RKTH.shape
    size = pool.page_size
    pos = refs.start[:, None] + jnp.arange(t)[None, :]  # [R, T]
    index = jnp.clip(pos // size, 0, refs.table.shape[1] - 1)
    page = jnp.where(refs.live, jnp.take_along_axis(refs.table, index, axis=1), 0)
    offset = pos % size
    dom = jnp.broadcast_to(refs.domain[:, None], (r, t))
    k_RTKH, v_RTKH = k_RKTH.swapaxes(1, 2), v_RKTH.swapaxes(1, 2)
    # Advanced indices (layer, domain, page, offset) around one slice: the update is [R, T, K, H].
    if not pool.quantized:
        return pool.replace(
            k=pool.k.at[layer, dom, page, :, offset, :].set(k_RTKH.astype(pool.k.dtype)),
            v=pool.v.at[layer, dom, page, :, offset, :].set(v_RTKH.astype(pool.v.dtype)),
        )
    kq, ks = _quantize(k_RTKH)
    vq, vs = _quantize(v_RTKH)
    return PagedKV(
        k=pool.k.at[layer, dom, page, :, offset, :].set(kq),
        v=pool.v.at[layer, dom, page, :, offset, :].set(vq),
        k_scale=pool.k_scale.at[layer, dom, page, :, offset].set(ks),
        v_scale=pool.v_scale.at[layer, dom, page, :, offset].set(vs),
    )


def _page(pool: PagedKV, layer, domain_R, page_R, dtype):
    """Keys and values of one page per row: [R, K, P, H] each, in `dtype`."""
    k, v = pool.k[layer, domain_R, page_R], pool.v[layer, domain_R, page_R]
    if pool.quantized:
        k = k.astype(jnp.float32) * pool.k_scale[layer, domain_R, page_R][..., None]
        v = v.astype(jnp.float32) * pool.v_scale[layer, domain_R, page_R][..., None]
    return k.astype(dtype), v.astype(dtype)


def attend_pages(
    q_RTNH: jax.Array, pool: PagedKV, layer, refs: PageRefs, num_keys_R: jax.Array, scale: float
) -> jax.Array:
    """Causal attention of each row's T queries (at positions start + t) over the first num_keys_R entries of
    its pages. Returns [R, T, N, H] in q's dtype. Scores, the running max and the normaliser are fp32.

    The loop runs over pages up to the longest row; a row whose keys end earlier reads the null page."""
    r, t, n, h = q_RTNH.shape
    k_heads, size = pool.k.shape[3], pool.page_size
    q = q_RTNH.reshape(r, t, k_heads, n // k_heads, h)
    q_pos = refs.start[:, None] + jnp.arange(t)[None, :]  # [R, T]
    pages = (jnp.max(num_keys_R) + size - 1) // size

    def body(i, carry):
        m, norm, acc = carry  # [R, K, G, T], [R, K, G, T], [R, K, G, T, H]
        in_use = i * size < num_keys_R
        page = jnp.where(in_use, refs.table[:, jnp.minimum(i, refs.table.shape[1] - 1)], 0)
        k, v = _page(pool, layer, refs.domain, page, q_RTNH.dtype)
        s = jnp.einsum("rtkgh,rkph->rkgtp", q, k, preferred_element_type=jnp.float32) * scale
        k_pos = i * size + jnp.arange(size)
        ok = (k_pos[None, :] < num_keys_R[:, None])[:, None, :] & (k_pos[None, None, :] <= q_pos[:, :, None])
        s = jnp.where(ok[:, None, None], s, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None])
        norm = norm * correction + jnp.sum(p, axis=-1)
        pv = jnp.einsum("rkgtp,rkph->rkgth", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return m_new, norm, acc * correction[..., None] + pv

    g = n // k_heads
    init = (
        jnp.full((r, k_heads, g, t), MASK_VALUE, jnp.float32),
        jnp.zeros((r, k_heads, g, t), jnp.float32),
        jnp.zeros((r, k_heads, g, t, h), jnp.float32),
    )
    _, norm, acc = jax.lax.fori_loop(0, pages, body, init)
    out = acc / jnp.maximum(norm, 1e-30)[..., None]  # [R, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4).reshape(r, t, n, h).astype(q_RTNH.dtype)
