"""Logical axis names: the closed set every param and constrained activation of the model is annotated with.

The model owns these names (as MaxText's `common_types` does); which mesh axis carries each one is decided by
the rule table in `qwen_audio_jax/sharding/rules.py`, per job, so the model code never names a mesh axis
(docs/decisions.md §3).
"""

from __future__ import annotations

# ---- parameter axes --------------------------------------------------------------------------------------
LAYERS = "layers"  # the stacked (scanned) layer axis
VOCAB = "vocab"  # lm_head output: split over tensor (vocab-parallel logits)
EMBED_VOCAB = "embed_vocab"  # the embedding table's rows: never split (a row gather over a split vocab
#                              would all-gather the whole table on every step)
EMBED = "embed"  # decoder width D
MLP = "mlp"  # decoder MLP width F
Q_HEADS = "q_heads"  # fused N*H output of q_proj / input of o_proj
KV_HEADS = "kv_heads"  # fused K*H output of k_proj / v_proj
NORM = "norm"  # norm scales and biases: always small, always replicated
AUDIO_EMBED = "audio_embed"  # encoder width
AUDIO_MLP = "audio_mlp"
AUDIO_HEADS = "audio_heads"
AUDIO_POS = "audio_pos"
CONV_KERNEL = "conv_kernel"
MEL = "mel"

# ---- activation axes -------------------------------------------------------------------------------------
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
CACHE_LENGTH = "cache_length"

# The KV cache [L, B, K, S, H] (model/decoder.py `KVCache`).
CACHE_AXES = (LAYERS, BATCH, ACT_HEADS, CACHE_LENGTH, None)
