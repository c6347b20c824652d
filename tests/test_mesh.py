"""The same programs on 1 device and on meshes of 8 simulated CPU devices (run in a subprocess, because the
device count is fixed when jax starts)."""

import json
import os
import subprocess
import sys

import pytest

from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.sharding.mesh import make_mesh, parse_mesh_spec
from tests._paths import REPO

pytestmark = pytest.mark.mesh

MESHES = ["data=8", "fsdp=8", "data=2,fsdp=2,tensor=2", "tensor=4,data=2"]


@pytest.fixture(scope="module")
def result():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.mesh_worker", *MESHES],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MESH_RESULT "))
    return json.loads(line[len("MESH_RESULT ") :])


@pytest.mark.parametrize("spec", MESHES)
def test_generation_equals_single_device(result, spec):
    got, ref = result["meshes"][spec], result["reference"]
    assert got["tokens"] == ref["tokens"]
    # A batch of 3 on a mesh whose batch axes do not divide 3 is padded, not refused.
    assert got["odd_batch"] == ref["odd_batch"]


@pytest.mark.parametrize("spec", MESHES)
def test_scores_equal_single_device(result, spec):
    for a, b in zip(result["meshes"][spec]["scores"], result["reference"]["scores"]):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))


# Under pure tensor parallelism these stay whole on every device by the rule table's design: their dims are
# model widths (split over fsdp, not tensor), and the embedding rows are never split (see sharding/rules.py).
TP_REPLICATED = [
    "audio_tower/conv1/kernel",
    "audio_tower/conv2/kernel",
    "audio_tower/embed_positions",
    "language_model/embed_tokens/embedding",
    "multi_modal_projector/linear/kernel",
]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("spec", MESHES)
def test_dpo_steps_equal_single_device(result, spec, lora):
    """Two DPO steps (the second after a sharded update) give the single-device loss and metrics within 1e-5,
    training every weight or LoRA adapters (sharded like their kernels) over a frozen base."""
    key = "dpo_lora" if lora else "dpo"
    got, ref = result["meshes"][spec][key], result["reference"][key]
    assert [m["step"] for m in got] == [1, 2]
    for a, b in zip(got, ref):
        for k in ("loss", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5), (spec, a["step"], k)


# Every param's PartitionSpec on each mesh, written out by hand from the rule table's design (docs/decisions.md §3):
# a weight's model-width dim (hidden / audio d_model) goes over `fsdp`, its heads / MLP / vocab dim over `tensor`;
# layers, norms, positions, conv taps, mel bins and embedding rows are never split; a mesh axis is used once per
# param; `data` never splits a weight. tiny(): widths 64, MLP 128, 4 x 16 q heads, 2 x 16 kv heads, vocab 152096
# (all divisible by 8 and by 4). Columns: fsdp=8 | data=2,fsdp=2,tensor=2 | tensor=4,data=2; "f" = 'fsdp',
# "t" = 'tensor', "-" = None, one letter per dim.
HAND_SPECS = {
    "audio_tower/conv1/bias": ("f", "f", "-"),
    "audio_tower/conv1/kernel": ("--f", "--f", "---"),
    "audio_tower/conv2/bias": ("f", "f", "-"),
    "audio_tower/conv2/kernel": ("--f", "--f", "---"),
    "audio_tower/embed_positions": ("-f", "-f", "--"),
    "audio_tower/layer_norm/bias": ("-", "-", "-"),
    "audio_tower/layer_norm/scale": ("-", "-", "-"),
    "audio_tower/layers/fc1/bias": ("--", "-t", "-t"),
    "audio_tower/layers/fc1/kernel": ("-f-", "-ft", "--t"),
    "audio_tower/layers/fc2/bias": ("-f", "-f", "--"),
    "audio_tower/layers/fc2/kernel": ("--f", "-tf", "-t-"),
    "audio_tower/layers/final_layer_norm/bias": ("--", "--", "--"),
    "audio_tower/layers/final_layer_norm/scale": ("--", "--", "--"),
    "audio_tower/layers/self_attn/k_proj/kernel": ("-f-", "-ft", "--t"),
    "audio_tower/layers/self_attn/out_proj/bias": ("-f", "-f", "--"),
    "audio_tower/layers/self_attn/out_proj/kernel": ("--f", "-tf", "-t-"),
    "audio_tower/layers/self_attn/q_proj/bias": ("--", "-t", "-t"),
    "audio_tower/layers/self_attn/q_proj/kernel": ("-f-", "-ft", "--t"),
    "audio_tower/layers/self_attn/v_proj/bias": ("--", "-t", "-t"),
    "audio_tower/layers/self_attn/v_proj/kernel": ("-f-", "-ft", "--t"),
    "audio_tower/layers/self_attn_layer_norm/bias": ("--", "--", "--"),
    "audio_tower/layers/self_attn_layer_norm/scale": ("--", "--", "--"),
    "language_model/embed_tokens/embedding": ("-f", "-f", "--"),
    "language_model/layers/input_layernorm/scale": ("--", "--", "--"),
    "language_model/layers/mlp/down_proj/kernel": ("--f", "-tf", "-t-"),
    "language_model/layers/mlp/gate_proj/kernel": ("-f-", "-ft", "--t"),
    "language_model/layers/mlp/up_proj/kernel": ("-f-", "-ft", "--t"),
    "language_model/layers/post_attention_layernorm/scale": ("--", "--", "--"),
    "language_model/layers/self_attn/k_proj/bias": ("--", "-t", "-t"),
    "language_model/layers/self_attn/k_proj/kernel": ("-f-", "-ft", "--t"),
    "language_model/layers/self_attn/o_proj/kernel": ("--f", "-tf", "-t-"),
    "language_model/layers/self_attn/q_proj/bias": ("--", "-t", "-t"),
    "language_model/layers/self_attn/q_proj/kernel": ("-f-", "-ft", "--t"),
    "language_model/layers/self_attn/v_proj/bias": ("--", "-t", "-t"),
    "language_model/layers/self_attn/v_proj/kernel": ("-f-", "-ft", "--t"),
    "language_model/norm/scale": ("-", "-", "-"),
    "lm_head/kernel": ("f-", "ft", "-t"),
    "multi_modal_projector/linear/bias": ("f", "f", "-"),
    "multi_modal_projector/linear/kernel": ("f-", "f-", "--"),  # audio width then LM width: fsdp used once
}
_LETTER = {"f": "'fsdp'", "t": "'tensor'", "-": "None"}


def _spec(letters: str) -> str:
    return "P(" + ", ".join(_LETTER[c] for c in letters) + ("," if len(letters) == 1 else "") + ")"


@pytest.mark.parametrize("spec", MESHES)
def test_param_shardings_are_the_hand_written_ones(result, spec):
    """The placed params' shardings (read back from the arrays) equal the table above; on data=8 every weight
    is whole on every device (data parallelism replicates weights)."""
    actual = result["meshes"][spec]["actual"]
    assert set(actual) == set(HAND_SPECS)
    if spec == "data=8":
        want = {k: _spec("-" * len(v[0])) for k, v in HAND_SPECS.items()}
    else:
        column = {"fsdp=8": 0, "data=2,fsdp=2,tensor=2": 1, "tensor=4,data=2": 2}[spec]
        want = {k: _spec(v[column]) for k, v in HAND_SPECS.items()}
    assert actual == want
    if spec == "tensor=4,data=2":
        assert result["meshes"][spec]["replicated_matrices"] == TP_REPLICATED


def test_hand_checked_shardings(result):
    """A few params on the 3-axis mesh, written out by hand from the rule table."""
    got = result["meshes"]["data=2,fsdp=2,tensor=2"]["actual"]
    assert got["language_model/layers/mlp/up_proj/kernel"] == "P(None, 'fsdp', 'tensor')"
    assert got["language_model/layers/mlp/down_proj/kernel"] == "P(None, 'tensor', 'fsdp')"
    assert got["language_model/layers/self_attn/q_proj/kernel"] == "P(None, 'fsdp', 'tensor')"
    assert got["lm_head/kernel"] == "P('fsdp', 'tensor')"
    assert got["language_model/embed_tokens/embedding"] == "P(None, 'fsdp')"
    assert got["language_model/norm/scale"] == "P(None,)"
    # tiny() has 2 KV heads x 16 = 32 fused columns: tensor=4 divides 32, so k_proj is split there too.
    assert (
        result["meshes"]["tensor=4,data=2"]["actual"]["language_model/layers/self_attn/k_proj/kernel"]
        == "P(None, None, 'tensor')"
    )
    assert result["meshes"]["data=2,fsdp=2,tensor=2"]["batch_size"] == 8  # 6 rounded up to data*fsdp = 4


def test_mesh_spec_parsing():
    assert parse_mesh_spec("data=2,fsdp=-1", 8) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert parse_mesh_spec(None, 4) == {"data": 4, "fsdp": 1, "tensor": 1}
    for bad in ["data=3", "data=2,fsdp=-1,tensor=-1", "pipeline=2", "data=x"]:
        with pytest.raises(ConfigError):
            parse_mesh_spec(bad, 8)
    mesh = make_mesh("data=1")
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
