"""Logical axis names (the closed set every param and constrained activation uses) and the rule tables that
map them onto the mesh axes ("data", "fsdp", "tensor").

Sharding is data (DESIGN decision 3): the model code only names logical axes; which mesh axis carries them is
decided here, per job. A rule maps a logical name to a mesh axis, a tuple of mesh axes, or None (replicated).
"""

from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor")

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

ALL_LOGICAL_AXES = (
    LAYERS, VOCAB, EMBED_VOCAB, EMBED, MLP, Q_HEADS, KV_HEADS, NORM, AUDIO_EMBED, AUDIO_MLP, AUDIO_HEADS, AUDIO_POS,
    CONV_KERNEL, MEL, BATCH, LENGTH, ACT_EMBED, ACT_HEADS, CACHE_LENGTH,
)  # fmt: skip

# Training: weights sharded over fsdp (ZeRO-3 style) and tensor (Megatron-style column/row split);
# the batch is split over both data and fsdp.
TRAIN_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (LAYERS, None),
    (VOCAB, "tensor"),
    (EMBED_VOCAB, None),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (Q_HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (NORM, None),
    (AUDIO_EMBED, "fsdp"),
    (AUDIO_MLP, "tensor"),
    (AUDIO_HEADS, "tensor"),
    (AUDIO_POS, None),
    (CONV_KERNEL, None),
    (MEL, None),
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (CACHE_LENGTH, None),
)

# Inference: weights replicated over data, split over tensor (and over fsdp when a user asks for an fsdp axis
# to fit a model that does not fit one device); the batch is split over data.
INFERENCE_RULES = TRAIN_RULES
