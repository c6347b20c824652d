"""Softmax attention over fresh keys, for the encoder and the decoder (training, scoring, a prompt's first
chunk). Attention over the paged cache is model/paged.py.

Implementations, chosen per call (docs/decisions.md §14):
  * "xla": our einsum path over [B, K, S, H] keys, scores and softmax in fp32; grouped KV heads without
    repeating them. The default on CPU and TPU.
  * "cudnn": cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`, given the
    mask's structure (causal and/or per-row lengths of right-padded rows) instead of a dense mask. The default
    on GPU where its constraints hold (bf16/fp16, head dim a multiple of 8 up to 128); the XLA path otherwise.
  * "dot_product": `jax.nn.dot_product_attention` with its XLA implementation and the dense mask (a second,
    independent formulation, tested equal to "xla").
`implementation="auto"` picks by backend; an explicit name overrides it (`--attention` on the command line).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from qwen_audio_jax.choices import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS

# A finite "minus infinity": a fully masked row (a padding query) then gets a uniform softmax instead of NaN.
MASK_VALUE = -1e30
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def resolve(implementation: str) -> str:
    """'auto' -> the backend's choice; anything else is checked and returned."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if implementation == "auto":
        return "cudnn" if jax.default_backend() == "gpu" else "xla"
    return implementation


@flax.struct.dataclass
class MaskForm:
    """The structure of a dense mask, for kernels that take structure instead of a [B, T, S] array: causal or
    not, and per-row valid lengths of right-padded queries and keys (None: all valid)."""

    causal: bool = flax.struct.field(pytree_node=False)
    q_lengths: jax.Array | None = None  # [B] int32
    kv_lengths: jax.Array | None = None  # [B] int32


def cudnn_supported(q_BTNH: jax.Array) -> bool:
    """cuDNN flash attention's constraints that hold for every call with these queries (the per-call choice)."""
    return (
        jax.default_backend() == "gpu"
        and q_BTNH.dtype in _CUDNN_DTYPES
        and q_BTNH.shape[-1] % 8 == 0
        and (q_BTNH.shape[-1] <= 128)
    )


def chosen(implementation: str, q_BTNH: jax.Array) -> str:
    """The implementation a call with these queries runs: "cudnn" falls back to "xla" where it cannot run."""
    if implementation == "cudnn" and not cudnn_supported(q_BTNH):
        return "xla"
    return implementation


def attend(
    q_BTNH: jax.Array,
    k_BKSH: jax.Array,
    v_BKSH: jax.Array,
    mask_BTS: jax.Array,
    scale: float,
    implementation: str = "xla",
    form: MaskForm | None = None,
) -> jax.Array:
    """Attention of T queries over S keys with K <= N kv heads (N a multiple of K). Returns [B, T, N, H] in q's
    dtype. mask_BTS: bool, True where query t may attend key s; `form` describes it for "cudnn" (without one,
    "cudnn" runs the XLA path). `implementation` must be resolved."""
    impl = chosen(implementation, q_BTNH)
    if impl == "cudnn" and form is not None:
        return _cudnn(q_BTNH, k_BKSH, v_BKSH, scale, form)
    if impl == "dot_product":
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
        implementation="xla",
    )
    return out.astype(q_BTNH.dtype)


def _cudnn(q_BTNH, k_BKSH, v_BKSH, scale, form: MaskForm):
    # Padding rows (length 0) would give cuDNN an empty softmax: give them one key; their output is ignored.
    lengths = {}
    if form.q_lengths is not None or form.kv_lengths is not None:
        b, t, s = q_BTNH.shape[0], q_BTNH.shape[1], k_BKSH.shape[2]
        q_len = jnp.full((b,), t, jnp.int32) if form.q_lengths is None else form.q_lengths
        kv_len = jnp.full((b,), s, jnp.int32) if form.kv_lengths is None else form.kv_lengths
        lengths = dict(query_seq_lengths=jnp.maximum(q_len, 1), key_value_seq_lengths=jnp.maximum(kv_len, 1))
    out = jax.nn.dot_product_attention(
        q_BTNH,
        k_BKSH.swapaxes(1, 2),
        v_BKSH.swapaxes(1, 2),
        scale=scale,
        is_causal=form.causal,
        implementation="cudnn",
        **lengths,
    )
    return out.astype(q_BTNH.dtype)
