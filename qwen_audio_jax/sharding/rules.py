"""The mesh axes and the rule table that maps the model's logical axis names onto them.

A rule maps a logical name (qwen_audio_jax/model/axes.py) to a mesh axis, a tuple of mesh axes, or None
(replicated). One table serves training and inference: weights are split over `fsdp` (ZeRO-3 style) and
`tensor` (Megatron-style column/row split) and replicated over `data`; the batch is split over `data` and
`fsdp`. A dimension its mesh axes do not divide stays replicated (`sharding/mesh.py::spec_for`).
"""

from __future__ import annotations

from collections.abc import Sequence

from qwen_audio_jax.model import axes

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

LOGICAL_RULES: Rules = (
    (axes.LAYERS, None),
    (axes.VOCAB, "tensor"),
    (axes.EMBED_VOCAB, None),
    (axes.EMBED, "fsdp"),
    (axes.MLP, "tensor"),
    (axes.Q_HEADS, "tensor"),
    (axes.KV_HEADS, "tensor"),
    (axes.NORM, None),
    (axes.AUDIO_EMBED, "fsdp"),
    (axes.AUDIO_MLP, "tensor"),
    (axes.AUDIO_HEADS, "tensor"),
    (axes.AUDIO_POS, None),
    (axes.CONV_KERNEL, None),
    (axes.MEL, None),
    (axes.BATCH, ("data", "fsdp")),
    (axes.LENGTH, None),
    (axes.ACT_EMBED, None),
    (axes.ACT_HEADS, "tensor"),
    (axes.CACHE_LENGTH, None),
)
