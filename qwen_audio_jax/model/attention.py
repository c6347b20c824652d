"""Softmax attention behind one function, for the encoder and the decoder, prefill and decode.

Two implementations, each proven equal to the other on CPU in fp32 (tests/test_attention.py):
  * "xla": our einsum path over the KV-cache layout [B, K, S, H], scores and softmax in fp32; grouped KV heads
    without repeating them. The default on CPU and TPU.
  * "dot_product": `jax.nn.dot_product_attention`, which dispatches to cuDNN flash attention on GPUs (bf16/fp16)
    and to XLA elsewhere. The default on GPU.
`implementation="auto"` picks by backend; an explicit name overrides it (`--attention` on the command line).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "dot_product")
# A finite "minus infinity": a fully masked row (a padding query) then gets a uniform softmax instead of NaN.
MASK_VALUE = -1e30


def resolve(implementation: str) -> str:
    """'auto' -> the backend's choice; anything else is checked and returned."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if implementation == "auto":
        return "dot_product" if jax.default_backend() == "gpu" else "xla"
    return implementation


def attend(
    q_BTNH: jax.Array,
    k_BKSH: jax.Array,
    v_BKSH: jax.Array,
    mask_BTS: jax.Array,
    scale: float,
    implementation: str = "xla",
) -> jax.Array:
    """Attention of T queries over S keys with K <= N kv heads (N a multiple of K). Returns [B, T, N, H] in q's
    dtype. mask_BTS: bool, True where query t may attend key s. `implementation` must be resolved."""
    if implementation == "dot_product":
        return _dot_product(q_BTNH, k_BKSH, v_BKSH, mask_BTS, scale)
    return _einsum(q_BTNH, k_BKSH, v_BKSH, mask_BTS, scale)


def _einsum(q_BTNH, k_BKSH, v_BKSH, mask_BTS, scale):
    b, t, n, h = q_BTNH.shape
    k = k_BKSH.shape[1]
    q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
    scores = jnp.einsum("btkgh,bksh->bkgts", q_BTKGH, k_BKSH, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask_BTS[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BKSH.dtype)
    out = jnp.einsum("bkgts,bksh->btkgh", probs, v_BKSH)
    return out.reshape(b, t, n, h)


def _dot_product(q_BTNH, k_BKSH, v_BKSH, mask_BTS, scale):
    # jax.nn wants keys as [B, S, K, H]; it groups query heads over kv heads itself. A fully masked query row
    # gets its large-negative fill everywhere, so it stays finite as in the einsum path.
    out = jax.nn.dot_product_attention(
        q_BTNH,
        k_BKSH.swapaxes(1, 2),
        v_BKSH.swapaxes(1, 2),
        mask=mask_BTS[:, None, :, :],
        scale=scale,
    )
    return out.astype(q_BTNH.dtype)
