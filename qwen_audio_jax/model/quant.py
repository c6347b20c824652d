"""Weight-only int8 for inference (`--quantize int8`): the decoder's linear layers and the lm_head hold int8
kernels with one fp32 scale per output channel (symmetric absmax), quantized at load from any model dir; the
audio tower, the embeddings and the norms keep the compute dtype.

    y = (x @ kernel_int8) * scale            kernel [in, out] int8, scale [out] fp32

Decode is memory-bound, so the point is to read one byte per weight: the int8 kernel must reach the matmul as
int8. XLA on GPU (a Triton gemm fusion) and TPU fuse the conversion into the dot. XLA:CPU converts a dot's
operand to a full-precision temporary first, so there the matmul runs over column blocks of at most
`CPU_BLOCK_BYTES` (converted): one block's temporary at a time, never a full-precision copy of a larger matrix
(tests/test_quant.py reads the compiled HLO). Measured on the 142M benchmark model's lm_head (2-core CPU): as
fast as the fp32 matmul alone, and 2.4x faster when other processes load the memory bus.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

CPU_BLOCK_BYTES = 1 << 20  # one converted column block on XLA:CPU: about an L2 cache

# The kernels `--quantize int8` converts: every decoder linear layer and the lm_head.
_DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_quantized_kernel(path: tuple[str, ...]) -> bool:
    """True for the param paths (keys of the nested dict) whose kernel is int8 under --quantize int8."""
    if path == ("lm_head", "kernel"):
        return True
    return path[0] == "language_model" and path[-1] == "kernel" and path[-2] in _DECODER_LINEARS


def int8_matmul(x: jax.Array, kernel: jax.Array, scale: jax.Array) -> jax.Array:
    """x [..., in] (compute dtype) @ int8 kernel [in, out], times scale [out]: [..., out] in x's dtype."""
    d_in, out = kernel.shape
    cols = cpu_block_columns(d_in, jnp.dtype(x.dtype).itemsize)
    if jax.default_backend() != "cpu" or out <= cols:
        y = jnp.dot(x, kernel.astype(x.dtype))
        return y * scale.astype(x.dtype)
    blocks = -(-out // cols)

    def block(i, y):
        start = jnp.minimum(i * cols, out - cols)  # the last block overlaps its neighbour: same values
        w = jax.lax.dynamic_slice_in_dim(kernel, start, cols, axis=1).astype(x.dtype)
        s = jax.lax.dynamic_slice_in_dim(scale, start, cols).astype(x.dtype)
        return jax.lax.dynamic_update_slice_in_dim(y, jnp.dot(x, w) * s, start, axis=y.ndim - 1)

    return jax.lax.fori_loop(0, blocks, block, jnp.zeros((*x.shape[:-1], out), x.dtype))


def cpu_block_columns(d_in: int, itemsize: int) -> int:
    """Output columns per converted block on XLA:CPU: a multiple of 128 within CPU_BLOCK_BYTES (128 at least)."""
    return max(128, CPU_BLOCK_BYTES // (d_in * itemsize) // 128 * 128)


def quantize_kernel(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """w [..., in, out] -> (int8 [..., in, out], fp32 scale [..., out]): symmetric, per output channel."""
    w32 = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w32), axis=-2) / 127.0
    q = jnp.round(w32 / jnp.where(scale == 0, 1.0, scale)[..., None, :])
    return jnp.clip(q, -127, 127).astype(jnp.int8), scale


def quantize_params(params: dict) -> dict:
    """The param tree with every `is_quantized_kernel` leaf replaced by an int8 kernel and its `scale` beside it
    (pure: jit it with the quantized tree's shardings as out_shardings)."""
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, value in flat.items():
        if is_quantized_kernel(path):
            out[path], out[path[:-1] + ("scale",)] = quantize_kernel(value)
        else:
            out[path] = value
    return traverse_util.unflatten_dict(out)


def weight_bytes(params) -> int:
    """Bytes the param tree takes on the devices (every leaf's global size)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
