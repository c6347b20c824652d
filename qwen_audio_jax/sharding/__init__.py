"""Sharding: meshes, the logical-axis rule table, one placement path, and the memory planner.

from qwen_audio_jax.sharding import Placement, make_mesh
"""

from qwen_audio_jax._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Placement": "qwen_audio_jax.sharding.placement",
        "make_mesh": "qwen_audio_jax.sharding.mesh",
        "parse_mesh_spec": "qwen_audio_jax.sharding.mesh",
        "LOGICAL_RULES": "qwen_audio_jax.sharding.rules",
        "MESH_AXES": "qwen_audio_jax.sharding.rules",
    },
)
