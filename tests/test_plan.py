"""Memory planner: exact byte counts for the 7B checked against numbers computed by hand from the shapes and
the rule table, the activation estimate's orderings, the fit boundary, and the `plan` command."""

from __future__ import annotations

import json

import pytest
from jax.sharding import PartitionSpec

from qwen_audio_jax.checkpoint.model_dir import write_config
from qwen_audio_jax.cli.main import main
from qwen_audio_jax.cli.plan_cmd import mesh_shape_from_spec, parse_bytes
from qwen_audio_jax.config import qwen2_audio_7b, tiny
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.sharding import planner
from qwen_audio_jax.sharding.planner import GIB, MIB, PlanRequest, fits
from qwen_audio_jax.sharding.rules import LOGICAL_RULES


def plan(config, mesh, batch, max_len, **kw):
    """The planner on a PlanRequest (the tests name the request's fields positionally for brevity)."""
    return planner.plan(config, PlanRequest(mesh=mesh, batch=batch, max_len=max_len, **kw))


TOTAL = 8_397_094_912  # docs/reference.md §5.3
# audio_tower by hand: conv1 3*128*1280+1280, conv2 3*1280*1280+1280, positions 1500*1280, final LN 2*1280,
# per layer: q,k,v,out 4*1280^2 + q,v,out biases 3*1280 + fc1 1280*5120+5120 + fc2 5120*1280+1280 + 2 LNs 4*1280.
ENCODER_LAYER = 4 * 1280**2 + 3 * 1280 + 1280 * 5120 + 5120 + 5120 * 1280 + 1280 + 4 * 1280
ENCODER = 492_800 + 4_916_480 + 1_920_000 + 2_560 + 32 * ENCODER_LAYER
# Params the rules leave unsplit by fsdp (no 'embed'/'audio_embed' axis): decoder input/post-attention LNs
# (32, 4096) x2, final norm (4096,), q/k/v biases (32, 4096) x3 (q_heads / kv_heads -> tensor); encoder final
# LN 2*1280, per-layer LNs 4 x (32, 1280), q/v biases 2 x (32, 1280) (audio_heads), fc1 bias (32, 5120) (audio_mlp).
DEC_UNSPLIT = 5 * 32 * 4096 + 4096
ENC_UNSPLIT = 2 * 1280 + 4 * 32 * 1280 + 2 * 32 * 1280 + 32 * 5120


def _shards(config, data=1, fsdp=1, tensor=1) -> dict:
    mesh = {"data": data, "fsdp": fsdp, "tensor": tensor}
    return {s.path: s for s in planner.param_shards(config, mesh, LOGICAL_RULES)}


@pytest.fixture(scope="module")
def cfg7b():
    return qwen2_audio_7b()


def test_weights_one_device(cfg7b):
    p = plan(cfg7b, {}, batch=1, max_len=1)
    assert p.total_params == TOTAL
    assert p.weights == 16_794_189_824 == 2 * TOTAL  # bf16 (inference default: the compute dtype)
    assert p.optimizer == p.gradients == p.gathered_weights == 0
    assert plan(cfg7b, {}, 1, 1, param_dtype="float32").weights == 4 * TOTAL


def test_kv_cache_exact(cfg7b):
    per_token = 32 * 2 * 32 * 128 * 2  # layers x (k, v) x kv heads x head dim x bf16
    assert per_token == MIB // 2
    assert plan(cfg7b, {}, 8, 4096).kv_cache == 8 * 4096 * per_token == 16 * GIB
    assert plan(cfg7b, {"tensor": 2}, 8, 4096).kv_cache == 8 * GIB  # kv heads split over tensor
    assert plan(cfg7b, {"data": 4}, 8, 4096).kv_cache == 4 * GIB  # batch split over data
    assert plan(cfg7b, {"fsdp": 2, "data": 2}, 8, 4096).kv_cache == 4 * GIB  # ... and over fsdp
    assert plan(cfg7b, {}, 8, 4096, compute_dtype="float32").kv_cache == 32 * GIB
    assert plan(cfg7b, {}, 8, 4096, train=True).kv_cache == 0
    # 3 rows on data=4 are padded to 4 (the engine never refuses a batch): one row per device.
    p = plan(cfg7b, {"data": 4}, 3, 4096)
    assert (p.padded_batch, p.rows_per_device, p.kv_cache) == (4, 1, 2 * GIB)


def test_kv_heads_that_do_not_divide_stay_replicated():
    cfg = tiny(num_kv_heads=2)  # 2 kv heads over tensor=4: replicated, like the engine's cache spec
    one = plan(cfg, {}, 4, 64).kv_cache
    assert plan(cfg, {"tensor": 4}, 4, 64).kv_cache == one
    assert plan(cfg, {"tensor": 2}, 4, 64).kv_cache == one // 2


def test_weights_fsdp8_from_the_rule_table(cfg7b):
    shards = _shards(cfg7b, fsdp=8)
    lm = shards["lm_head/kernel"]  # ('embed', 'vocab') -> embed over fsdp: 4096 / 8 rows each
    assert lm.shape == (4096, 156032) and lm.shards == 8 and "fsdp" in lm.spec
    assert lm.size * 2 // lm.shards == (4096 // 8) * 156032 * 2
    emb = shards["language_model/embed_tokens/embedding"]  # ('embed_vocab', 'embed'): rows never split
    assert emb.spec == str(PartitionSpec(None, "fsdp"))
    assert emb.shards == 8 and emb.size // 8 == 156032 * (4096 // 8)
    assert shards["language_model/layers/self_attn/q_proj/bias"].shards == 1  # q_heads -> tensor (size 1)
    proj = shards["multi_modal_projector/linear/kernel"]  # ('audio_embed', 'embed'): fsdp used once only
    assert proj.shards == 8 and proj.spec.count("fsdp") == 1

    unsplit = DEC_UNSPLIT + ENC_UNSPLIT
    assert sum(s.size for s in shards.values() if s.shards == 1) == unsplit
    expected = 2 * (unsplit + (TOTAL - unsplit) // 8)
    assert (TOTAL - unsplit) % 8 == 0
    assert plan(cfg7b, {"fsdp": 8}, 8, 16).weights == expected
    # data replicates weights: data=2,fsdp=4 holds what fsdp=4 holds.
    assert plan(cfg7b, {"data": 2, "fsdp": 4}, 8, 16).weights == 2 * (unsplit + (TOTAL - unsplit) // 4)


def test_tensor_split(cfg7b):
    shards = _shards(cfg7b, tensor=2)
    assert shards["lm_head/kernel"].shards == 2  # vocab over tensor: 156032 / 2 columns
    assert shards["language_model/embed_tokens/embedding"].shards == 1  # embed_vocab is never split
    assert shards["language_model/layers/self_attn/k_proj/bias"].shards == 2  # kv_heads -> tensor
    assert shards["audio_tower/layers/fc2/bias"].shards == 1  # audio_embed -> fsdp (size 1)


def test_training_optimizer_and_gradients(cfg7b):
    trainable = TOTAL - ENCODER
    assert trainable == 7_760_125_952
    p = plan(cfg7b, {}, 8, 2048, train=True)  # fp32 params by default, encoder frozen
    assert p.param_dtype == "float32" and p.freeze_audio_encoder
    assert p.trainable_params == trainable
    assert p.weights == 4 * TOTAL
    assert p.optimizer == 2 * 4 * trainable  # mu + nu in fp32, trainable params only
    assert p.gradients == 4 * trainable
    # bf16 params: an fp32 master copy per trainable param joins the optimizer state; grads are bf16.
    b = plan(cfg7b, {}, 8, 2048, train=True, param_dtype="bfloat16")
    assert (b.weights, b.optimizer, b.gradients) == (2 * TOTAL, (8 + 4) * trainable, 2 * trainable)
    # A trained encoder: all but its stored positional embedding, which the reference never trains.
    full = plan(cfg7b, {}, 8, 2048, train=True, freeze_audio_encoder=False)
    assert full.trainable_params == TOTAL - 1500 * 1280 and full.optimizer == 8 * (TOTAL - 1500 * 1280)
    projector = 1280 * 4096 + 4096
    frozen_proj = plan(cfg7b, {}, 8, 2048, train=True, freeze_projector=True)
    assert frozen_proj.trainable_params == trainable - projector
    # Gradient accumulation adds the trainer's accumulator, zeros_like(params): every param, frozen ones too.
    acc = plan(cfg7b, {}, 8, 2048, train=True, grad_accum=4)
    assert acc.gradients == 4 * trainable + 4 * TOTAL and acc.total == p.total + 4 * TOTAL
    # DPO with a reference model in memory: an fp32 copy of every param, sharded like the policy.
    ref = plan(cfg7b, {"fsdp": 8}, 8, 2048, train=True, reference="model")
    assert ref.reference_weights == ref.weights and plan(cfg7b, {}, 8, 2048, train=True).reference_weights == 0
    # fsdp=8: the frozen encoder's params carry no state, the decoder's unsplit ones (DEC_UNSPLIT) are whole.
    s = plan(cfg7b, {"fsdp": 8}, 8, 2048, train=True)
    assert s.optimizer == 8 * (DEC_UNSPLIT + (trainable - DEC_UNSPLIT) // 8)
    assert s.gradients == 4 * (DEC_UNSPLIT + (trainable - DEC_UNSPLIT) // 8)
    assert s.gathered_weights > 0 and p.gathered_weights == 0


def test_activation_estimate_orderings(cfg7b):
    kw = dict(train=True)
    none, dots, full = (plan(cfg7b, {"fsdp": 8}, 8, 2048, remat=r, **kw).activations for r in ("none", "dots", "full"))
    assert none > dots > full > 0
    # Full remat keeps one [rows, T, D] carry per layer: exactly that term times L is inside the estimate.
    assert full > 32 * 2048 * 4096 * 2
    assert plan(cfg7b, {"fsdp": 8}, 16, 2048, **kw).activations > none  # 2 rows per device
    assert plan(cfg7b, {"fsdp": 4, "tensor": 2}, 8, 2048, **kw).activations > none  # 2 rows, heads halved
    inf = plan(cfg7b, {}, 8, 4096).activations
    # Prompts prefill in chunks of at most 1024 tokens: a longer prompt needs no more (here the encoder's one
    # 30 s clip, 20 heads of 1500 x 1500 fp32 scores, is the peak either way).
    assert plan(cfg7b, {}, 8, 4096, prompt_len=512).activations <= inf
    assert plan(cfg7b, {}, 8, 4096, prompt_len=1024).activations == inf
    assert plan(cfg7b, {"tensor": 4}, 8, 4096).activations < inf
    assert plan(cfg7b, {"data": 8}, 8, 4096).activations < inf


def test_fits_boundary(cfg7b):
    p = plan(cfg7b, {}, 8, 4096)
    assert fits(p, p.total, margin=1.0) and not fits(p, p.total - 1, margin=1.0)
    assert fits(p, 2 * p.total, margin=0.5) and not fits(p, 2 * p.total - 1, margin=0.5)
    assert p.total == p.weights + p.kv_cache + p.activations
    assert fits(p, planner.device_bytes("h200")) and not fits(p, planner.device_bytes("tpu-v5e"))


def test_inputs():
    assert mesh_shape_from_spec("data=2,fsdp=4") == {"data": 2, "fsdp": 4, "tensor": 1}
    for bad in ("data=-1", "data=0", "foo=2", "data", ""):
        with pytest.raises(ConfigError):
            mesh_shape_from_spec(bad)
    assert parse_bytes("16GiB") == parse_bytes("16G") == 16 * GIB
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes("512 MiB") == 512 * MIB
    for bad in ("16", "lots", "16XB"):
        with pytest.raises(ConfigError):
            parse_bytes(bad)
    assert planner.device_bytes("tpu-v5e") == 16 * GIB and planner.device_bytes("h200") == 141 * GIB
    with pytest.raises(ConfigError):
        planner.device_bytes("tpu-v9")
    with pytest.raises(ConfigError):
        plan(tiny(), {}, 1, 8, prompt_len=9)
    with pytest.raises(ConfigError):
        plan(tiny(), {}, 1, 8, remat="sometimes")


def test_cli_table_and_json(capsys, tmp_path):
    # 8 x 4096 cache slots, prompts of 1024 tokens (~750 audio + text) on one H100.
    assert (
        main(
            [
                "plan",
                "--model",
                "qwen2_audio_7b",
                "--mesh",
                "tensor=1",
                "--batch",
                "8",
                "--max-len",
                "4096",
                "--prompt-len",
                "1024",
                "--device",
                "h100",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    labels = ("weights", "optimizer state", "gradients", "DPO reference", "KV cache", "activations", "total")
    for label in (*labels, "16,794,189,824"):
        assert label in out
    assert "90% usable" in out and "fits" in out and "does not fit" not in out

    assert (
        main(
            [
                "plan",
                "--model",
                "qwen2_audio_7b",
                "--mesh",
                "fsdp=8",
                "--batch",
                "8",
                "--max-len",
                "2048",
                "--train",
                "--device-memory",
                "16GiB",
            ]
        )
        == 3
    )  # fmt: skip  (a valid plan that does not fit)
    assert "does not fit" in capsys.readouterr().out

    assert (
        main(
            [
                "plan",
                "--model",
                "tiny",
                "--mesh",
                "data=2,fsdp=4",
                "--batch",
                "8",
                "--max-len",
                "64",
                "--train",
                "--remat",
                "full",
                "--device",
                "tpu-v5e",
                "--json",
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    expected = plan(tiny(), {"data": 2, "fsdp": 4}, 8, 64, train=True, remat="full")
    assert d["total"] == expected.total and d["weights"] == expected.weights and d["fits"] is True
    assert d["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1} and d["device_memory"] == 16 * GIB

    model_dir = tmp_path / "m"  # a model dir: its config.json is read, nothing else
    model_dir.mkdir()
    write_config(model_dir, tiny(), "float32")
    assert main(["plan", "--model", str(model_dir), "--batch", "2", "--max-len", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == expected.total_params


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "neither a preset"),
        (["--model", "tiny", "--mesh", "data=2,gpu=4"], "bad mesh spec"),
        (["--model", "tiny", "--device", "tpu-v9"], "unknown device"),
        (["--model", "tiny", "--device-memory", "16"], "bad memory size"),
        (["--model", "tiny", "--prompt-len", "99"], "prompt_len"),
        (["--model", "tiny", "--train", "--grad-accum", "0"], "--grad-accum: 0 is out of range"),
        (["--model", "tiny", "--remat", "dots_no_batch", "--train", "--batch", "0"], "--batch: 0 is out of range"),
        (["--model", "tiny", "--lora"], "--lora plans a training step: add --train"),
    ],
)
def test_cli_errors_are_one_line(capsys, args, message):
    assert main(["plan", "--batch", "1", "--max-len", "8", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_planner_knows_the_engines_shapes():
    """The activation estimate's chunk and page sizes are the engine's."""
    from qwen_audio_jax.batching.buckets import Buckets
    from qwen_audio_jax.generation.engine import PAGE_SIZE
    from qwen_audio_jax.sharding import activations

    assert activations.PREFILL_CHUNK == Buckets().chunks[-1] and activations.KV_PAGE == PAGE_SIZE


def test_quantized_plan_counts_int8_weights_and_cache(cfg7b):
    """--quantize int8: the 7B's 32 x 7 decoder kernels and the lm_head at one byte (+ fp32 scales per output
    channel), the rest (embeddings, audio tower, norms, biases) in bf16; --kv-cache-dtype int8: head_dim + 4 bytes
    per token, head and layer for k and for v. Worked out from the 7B shapes."""
    d, v = 4096, 156032
    layer_kernels = 4 * d * d + 3 * d * 11008  # q, k, v, o (MHA) and gate, up, down
    layer_scales = 4 * d + 2 * 11008 + d
    quantized = 32 * layer_kernels + d * v
    scales = 4 * (32 * layer_scales + v)
    base = plan(cfg7b, {}, 8, 4096)
    q = planner.plan(cfg7b, planner.PlanRequest(mesh={}, batch=8, max_len=4096, quantize="int8"))
    assert q.weights == base.weights - 2 * quantized + quantized + scales
    kv = planner.plan(cfg7b, planner.PlanRequest(mesh={}, batch=8, max_len=4096, kv_cache_dtype="int8"))
    assert base.kv_cache == 2 * 32 * 8 * 32 * 4096 * 128 * 2  # 0.5 MiB per token in bf16
    assert kv.kv_cache == 2 * 32 * 8 * 32 * 4096 * (128 + 4)


def test_lora_plan_holds_the_base_once_and_trains_adapters_only(cfg7b):
    """--lora: rank-r A [in, r] and B [r, out] on the 7B's 32 x 7 decoder linear layers (MHA: q, k, v, o are
    4096 -> 4096; gate, up 4096 -> 11008; down 11008 -> 4096), fp32, with AdamW's two fp32 moments; the base in
    its own dtype (int8: as --quantize int8 counts it); no reference copy; the adapters' gradients, twice with
    grad_accum. Worked out from the 7B shapes."""
    from qwen_audio_jax.sharding.plan_lora import LoraPlan

    d, f, r = 4096, 11008, 8
    adapters = 32 * r * (4 * (d + d) + 2 * (d + f) + (f + d))
    assert adapters == 19_988_480
    lora = plan(cfg7b, {}, 2, 2048, train=True, reference="model", lora=LoraPlan(rank=r))
    assert (lora.trainable_params, lora.lora_rank) == (adapters, r)
    assert lora.weights == 2 * TOTAL + 4 * adapters and lora.reference_weights == 0
    assert (lora.optimizer, lora.gradients) == (8 * adapters, 4 * adapters)
    acc = plan(cfg7b, {}, 2, 2048, train=True, grad_accum=2, lora=LoraPlan(rank=r))
    assert acc.gradients == 8 * adapters
    quantized = 32 * (4 * d * d + 3 * d * f) + d * 156032
    scales = 4 * (32 * (4 * d + 2 * f + d) + 156032)
    q = plan(cfg7b, {}, 2, 2048, train=True, lora=LoraPlan(rank=r, base_dtype="int8"))
    assert q.weights == lora.weights - 2 * quantized + quantized + scales
    # The adapted audio tower: q, k, v, out (1280 -> 1280) and fc1, fc2 (1280 <-> 5120) in each of 32 layers.
    audio = plan(cfg7b, {}, 2, 2048, train=True, lora=LoraPlan(rank=r, audio_encoder=True))
    assert audio.trainable_params == adapters + 32 * r * (4 * 2 * 1280 + 2 * (1280 + 5120))
    # The goals: a 7B LoRA-DPO step (batch 1 = chosen + rejected, 2048 tokens, remat) within 40 GB
    # on a bf16 base and within 24 GB on an int8 base, by the plan.
    for base_dtype, gb in (("bfloat16", 40), ("int8", 24)):
        p = plan(cfg7b, {}, 2, 2048, train=True, remat="full", lora=LoraPlan(rank=r, base_dtype=base_dtype))
        assert fits(p, gb * 10**9), (base_dtype, p.total / GIB)


def test_cli_lora_plan(capsys):
    args = ["plan", "--model", "qwen2_audio_7b", "--batch", "2", "--max-len", "2048", "--train", "--remat", "full"]
    assert main([*args, "--lora", "--lora-base-dtype", "int8", "--device", "a100-40g", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["lora_rank"], got["trainable_params"], got["param_dtype"]) == (8, 19_988_480, "int8")
    assert got["reference_weights"] == 0 and got["fits"]
    assert main([*args, "--lora", "--lora-rank", "16"]) == 0
    out = capsys.readouterr().out
    assert "LoRA rank 16: adapters train over a frozen bfloat16 base held once" in out and "39,976,960" in out
