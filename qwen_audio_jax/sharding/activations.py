"""The memory planner's activation estimate (sharding/planner.py's module docstring says what it counts): the
per-layer saved set of each remat policy, one layer's forward peak, and the whole-step peak for inference and
training. Plain Python over config numbers; no jax."""

from __future__ import annotations

from collections.abc import Mapping

from qwen_audio_jax.config import ModelConfig

LOGPROB_CHUNK = 128  # positions per lm_head chunk in model/logprobs.py (its default)
# The generation engine's shapes (tests/test_plan.py checks they equal batching/buckets.py's largest chunk and
# generation/engine.py's PAGE_SIZE): a prompt is prefilled one request per device at most this many tokens at a
# time, and decode attention reads one page of keys per step of its loop.
PREFILL_CHUNK = 1024
KV_PAGE = 128


# ---- activations -----------------------------------------------------------------------------------------
def _layer_saved(
    policy: str, rows: int, t: int, d: int, n: int, k: int, h: int, f: int, mlp_in: int, c: int, tn: int, tf: int
) -> int:
    """Bytes one transformer layer keeps for the backward pass, per device, by remat policy.

    rows*T tokens; width D; N query / K kv heads of H; MLP width F with `mlp_in` input projections (2 for
    Qwen2's gated MLP, 1 for Whisper's); head-sized tensors split tn ways, F-sized tf ways (tensor axis).
      none: c*rows*T*(4D [x, norm1 out, residual, norm2 out] + (2NH + 2KH) [q, k, v, attn out]
            + 2*mlp_in*F [gate, up, act, product]) + rows*N*T*T*(4 + c) [fp32 softmax out, probs in c]
      dots: c*rows*T*(3D [x, o_proj out, down out] + (2NH + 2KH) + mlp_in*F) + rows*N*T*T*4 [fp32 scores]
            (jax.checkpoint_policies.checkpoint_dots: matmul outputs are saved, the rest is recomputed)
      full: c*rows*T*D (only the scan carry: each layer's input)
    """
    tok = rows * t
    heads = (2 * n * h + 2 * k * h) // tn
    scores = rows * n * t * t // tn
    if policy == "full":
        return c * tok * d
    if policy == "dots":
        return c * tok * (3 * d + heads + mlp_in * f // tf) + 4 * scores
    return c * tok * (4 * d + heads + 2 * mlp_in * f // tf) + (4 + c) * scores


def _layer_forward_peak(
    rows: int, t: int, s: int, d: int, n: int, k: int, h: int, f: int, mlp_in: int, c: int, tn: int, tf: int
) -> int:
    """Forward-only peak of one layer: residual in + out (2 [rows, T, D]) plus the larger of attention
    (q, k, v, out + [rows, N, T, S] fp32 scores, an fp32 softmax temporary and the probs in c) and the MLP
    ((mlp_in + 1) [rows, T, F])."""
    tok = rows * t
    attn = c * tok * (2 * n * h + 2 * k * h) // tn + rows * n * t * s * (8 + c) // tn
    mlp = c * tok * (mlp_in + 1) * f // tf
    return 2 * c * tok * d + max(attn, mlp)


def _split(dim: int, tensor: int) -> int:
    """How many ways the tensor axis splits an activation dim (not at all when it does not divide)."""
    return tensor if tensor > 1 and dim % tensor == 0 else 1


def activations(
    cfg: ModelConfig,
    mesh: Mapping[str, int],
    rows: int,
    max_len: int,
    prompt_len: int,
    train: bool,
    remat: str,
    frozen: bool,
    c: int,
    layer_grad: int = 0,
    head_grad: int = 0,
) -> int:
    """Peak activation estimate (module docstring). layer_grad / head_grad: per-device bytes of one decoder
    layer's weight gradient and of lm_head's (the chunked lm_head scan accumulates it in a temporary)."""
    dec, enc, t = cfg.decoder, cfg.audio, mesh["tensor"]
    tn, tf, tv = _split(dec.num_kv_heads, t), _split(dec.intermediate_size, t), _split(dec.vocab_size, t)
    dec_dims = (dec.hidden_size, dec.num_heads, dec.num_kv_heads, dec.head_dim, dec.intermediate_size, 2)
    # Audio encoder: one 30 s clip per row (the reference pads every clip to 3000 mel frames -> A positions).
    a, ta, tfa = enc.max_source_positions, _split(enc.num_heads, t), _split(enc.ffn_dim, t)
    enc_dims = (enc.d_model, enc.num_heads, enc.num_heads, enc.head_dim, enc.ffn_dim, 1)
    stem = rows * (4 * enc.num_mel_bins * 2 * a + c * 2 * (2 * a) * enc.d_model)  # fp32 mel + conv1 out, gelu
    enc_fwd = max(stem, _layer_forward_peak(rows, a, a, *enc_dims, c, ta, tfa))

    if not train:
        # The engine (generation/): clips encoded one per call, prompts prefilled one per device in chunks of
        # at most PREFILL_CHUNK tokens, decode attention over one KV page at a time (keys never copied whole).
        enc_one = max(stem // max(rows, 1), _layer_forward_peak(1, a, a, *enc_dims, c, ta, tfa))
        tp = min(prompt_len, PREFILL_CHUNK)
        prefill = _layer_forward_peak(1, tp, tp, *dec_dims, c, tn, tf) + tp * tp
        decode = _layer_forward_peak(rows, 1, KV_PAGE, *dec_dims, c, tn, tf)
        decode += 2 * c * rows * dec.num_kv_heads * KV_PAGE * dec.head_dim // tn  # one page of k, v per slot
        logits = rows * dec.vocab_size * (4 + 1)  # last-position fp32 logits + the `seen` bool mask
        return max(prefill, decode, enc_one) + logits

    # Backward: the saved set of every layer, plus the larger of two working sets: one layer's backward
    # (its full activations recomputed, fp32 d-probs and d-scores [rows, N, T, T], its weight gradient) and
    # the lm_head's (final hidden + its gradient, 3 fp32 logits chunks, lm_head's gradient accumulator).
    saved = dec.num_layers * _layer_saved(remat, rows, max_len, *dec_dims, c, tn, tf)
    work = _layer_saved("none", rows, max_len, *dec_dims, c, tn, tf) + layer_grad
    work += 2 * 4 * rows * dec.num_heads * max_len * max_len // tn
    head = 2 * c * rows * max_len * dec.hidden_size + 3 * 4 * rows * LOGPROB_CHUNK * dec.vocab_size // tv + head_grad
    decoder = saved + max(work, head) + rows * max_len * max_len
    if frozen:  # forward only, done before the decoder starts saving
        return max(decoder, enc_fwd)
    enc_saved = enc.num_layers * _layer_saved(remat, rows, a, *enc_dims, c, ta, tfa)
    return decoder + enc_saved
