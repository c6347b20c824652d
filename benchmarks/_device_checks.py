"""Device suite, part 1: the machine's two ceilings, and correctness on the device (fp32 equal to the CPU, bf16,
int8 weights and int8 KV against fp32, cuDNN attention against the XLA path, the int8 program's HLO)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from _device_common import H200_BF16_TFLOPS, REPO, median_time, synthetic_requests

DEMO_INPUTS = REPO / ".device" / "demo_inputs.npz"  # written here by `accelerator.py --prepare` (needs librosa)


def section_env(suite) -> None:
    """Versions, and the two ceilings measured once: device-to-device copy bandwidth and bf16 matmul rate."""
    import flax
    import jax
    import jax.numpy as jnp

    dev = jax.devices()[0]
    n = (1 << 28) if not suite.smoke else (1 << 20)  # 512 MiB of bf16 (2 MiB in smoke mode)
    x = jax.random.normal(jax.random.PRNGKey(0), (n,), jnp.bfloat16)
    copy = jax.jit(lambda a: a * 1.0001)
    s = median_time(lambda: copy(x).block_until_ready(), reps=10)
    bandwidth = 2 * n * 2 / s  # read + write
    m = 8192 if not suite.smoke else 256
    a = jax.random.normal(jax.random.PRNGKey(1), (m, m), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(2), (m, m), jnp.bfloat16)
    mm = jax.jit(lambda a, b: a @ b)
    s_mm = median_time(lambda: mm(a, b).block_until_ready(), reps=10)
    suite.bandwidth, suite.matmul_flops = bandwidth, 2 * m**3 / s_mm
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    suite.emit(
        "env",
        backend=jax.default_backend(),
        device=str(getattr(dev, "device_kind", dev)),
        devices=jax.device_count(),
        jax=jax.__version__,
        flax=flax.__version__,
        torch=torch_version,
        copy_bandwidth_gb_s=round(bandwidth / 1e9, 1),
        bf16_matmul_tflops=round(suite.matmul_flops / 1e12, 1),
        datasheet_bf16_tflops=H200_BF16_TFLOPS,
    )


def _engine(config, params, dtype, placement=None, **kw):
    from qwen_audio_jax.generation.engine import Engine

    return Engine(config, params, dtype=dtype, placement=placement, max_len=2048, **kw)


def _agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    prefix = [next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), min(len(p), len(q))) for p, q in zip(a, b)]
    return {
        "identical": f"{sum(p == q for p, q in zip(a, b))}/{len(a)}",
        "mean_common_prefix": round(float(np.mean(prefix)), 2),
    }


def section_correctness(suite) -> None:
    """The tiny model's fp32 greedy tokens on the device equal the CPU's; bf16, int8 weights and int8 KV against
    the device's fp32 (random weights: near-uniform logits flip easily, so these are agreement figures)."""
    import jax
    import jax.numpy as jnp

    from qwen_audio_jax.config import tiny
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.model.params import init_params
    from qwen_audio_jax.model.quant import quantize_params
    from qwen_audio_jax.sharding.mesh import make_mesh
    from qwen_audio_jax.sharding.placement import Placement

    config = tiny()
    prepared = synthetic_requests(config, 6 if not suite.smoke else 3, seed=0)
    opts = GenerationOptions(max_new_tokens=24 if not suite.smoke else 8)
    params = init_params(config, jax.random.PRNGKey(7))
    cpu = Placement(make_mesh(None, devices=jax.devices("cpu")[:1]))
    ref = _engine(config, params, jnp.float32, cpu, batch_size=4, attention="xla").generate(prepared, opts)
    ref_tokens = [o.token_ids for o in ref]
    runs = {
        "fp32": dict(dtype=jnp.float32),
        "bf16": dict(dtype=jnp.bfloat16),
        "bf16_int8_weights": dict(dtype=jnp.bfloat16, quantized=True),
        "bf16_int8_kv": dict(dtype=jnp.bfloat16, kv_cache_dtype="int8"),
    }
    device_fp32 = None
    for name, kw in runs.items():
        dtype = kw.pop("dtype")
        p = jax.tree_util.tree_map(lambda x, dtype=dtype: x.astype(dtype), params)
        if kw.get("quantized"):
            p = jax.jit(quantize_params)(p)
        tokens = [o.token_ids for o in _engine(config, p, dtype, batch_size=4, **kw).generate(prepared, opts)]
        if name == "fp32":
            device_fp32 = tokens
            suite.emit("correctness", run="tiny fp32: device vs CPU", **_agreement(tokens, ref_tokens))
        else:
            suite.emit("correctness", run=f"tiny {name} vs device fp32", **_agreement(tokens, device_fp32))


def section_demo_model(suite) -> None:
    """The bundled (trained) demo model on its 20 held-out clips, prepared on the CPU machine (DEMO_INPUTS):
    answers right per precision, and agreement with fp32."""
    if not DEMO_INPUTS.is_file():
        suite.emit("demo_model", skipped=f"{DEMO_INPUTS} not carried")
        return
    import jax
    import jax.numpy as jnp

    from qwen_audio_jax.api import load
    from qwen_audio_jax.demo.bundle import DEMO_MODEL
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.text.processor import PreparedRequest

    data = np.load(DEMO_INPUTS)
    prepared = [
        PreparedRequest(
            [int(t) for t in data["tokens"][i, : data["ntok"][i]]],
            [np.pad(data["mels"][i], ((0, 0), (0, 3000 - data["mels"].shape[2])), constant_values=data["floor"][i])],
            [int(data["mel_len"][i])],
        )
        for i in range(len(data["ntok"]))
    ]
    expected = [str(e) for e in data["expected"]]
    answers = {}
    runs = (
        ("fp32", jnp.float32, {}),
        ("bf16", jnp.bfloat16, {}),
        ("bf16_int8_weights", jnp.bfloat16, {"quantize": "int8"}),
        ("bf16_int8_kv", jnp.bfloat16, {"kv": "int8"}),
    )
    for name, dtype, kw in runs if not suite.smoke else runs[::2]:
        model = load(DEMO_MODEL, dtype=dtype, quantize=kw.get("quantize", "none"))
        engine = _engine(
            model.config,
            model.params,
            dtype,
            batch_size=8,
            quantized=model.quantized,
            kv_cache_dtype=kw.get("kv", "auto"),
        )
        outs = engine.generate(prepared, GenerationOptions(max_new_tokens=24))
        answers[name] = [model.tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs]
        right = sum(_words(a) == _words(e) for a, e in zip(answers[name], expected))
        same = sum(a == b for a, b in zip(answers[name], answers["fp32"]))
        suite.emit("demo_model", run=name, right=f"{right}/{len(expected)}", same_as_fp32=same)
        del model, engine
        jax.clear_caches()


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def section_kernels(suite) -> None:
    """cuDNN flash attention against the XLA path (decoder causal + lengths, GQA; encoder keys-only), the path
    each call chose, and the int8 decode program's HLO read for full-precision weight copies."""
    import jax
    import jax.numpy as jnp

    from qwen_audio_jax.model.attention import MaskForm, attend, chosen, resolve

    rng = np.random.default_rng(0)
    impl = resolve("auto")
    for name, (b, t, n, k, h), causal in (
        ("decoder", (2, 384, 32, 8, 128), True),
        ("encoder", (2, 1500, 20, 20, 64), False),
    ):
        q = jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.bfloat16)
        kk = jnp.asarray(rng.standard_normal((b, k, t, h)), jnp.bfloat16)
        v = jnp.asarray(rng.standard_normal((b, k, t, h)), jnp.bfloat16)
        lengths = jnp.asarray([t, t // 3], jnp.int32)
        valid = jnp.arange(t)[None, :] < lengths[:, None]
        mask = (jnp.arange(t)[None, None, :] <= jnp.arange(t)[None, :, None]) if causal else jnp.ones((1, t, t), bool)
        mask = mask & valid[:, None, :]
        form = MaskForm(causal=causal, q_lengths=lengths if causal else None, kv_lengths=lengths)
        fast = jax.jit(lambda q, k, v, m, f, h=h: attend(q, k, v, m, h**-0.5, impl, f))(q, kk, v, mask, form)
        slow = jax.jit(lambda q, k, v, m, h=h: attend(q, k, v, m, h**-0.5, "xla"))(q, kk, v, mask)
        rows = valid if causal else jnp.ones((b, t), bool)  # padding queries' outputs are never used
        err = jnp.where(rows[..., None, None], jnp.abs(fast.astype(jnp.float32) - slow.astype(jnp.float32)), 0)
        rel = float(
            jnp.linalg.norm(err) / jnp.linalg.norm(jnp.where(rows[..., None, None], slow, 0).astype(jnp.float32))
        )
        suite.emit("kernels", check=f"attention {name}", path=chosen(impl, q), rel_err_vs_xla=round(rel, 5))
    _int8_hlo(suite)


def _int8_hlo(suite) -> None:
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from qwen_audio_jax.config import AudioEncoderConfig, DecoderConfig, ModelConfig
    from qwen_audio_jax.generation.engine import Engine
    from qwen_audio_jax.model import quant
    from qwen_audio_jax.model.params import abstract_params

    config = ModelConfig(
        audio=AudioEncoderConfig(d_model=64, num_layers=1, num_heads=4, ffn_dim=128),
        decoder=DecoderConfig(hidden_size=1024, intermediate_size=2816, num_layers=2, num_heads=8, num_kv_heads=8),
    )
    abstract = abstract_params(config, quantized=True)
    shapes = set()
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        if quant.is_quantized_kernel(path):
            shapes |= {tuple(leaf.shape), tuple(leaf.shape[-2:])}
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    engine = Engine(config, params, dtype=jnp.bfloat16, batch_size=8, quantized=True, max_len=512)
    state = jax.eval_shape(engine.programs.init)[0]
    hlo = engine.programs.lower_decode(state, chunk=4).compile().as_text()
    copies = []
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%\S+ = (bf16|f16|f32)\[([\d,]*)\]", line)
        if m and tuple(int(d) for d in m.group(2).split(",") if d) in shapes:
            copies.append(line.strip()[:200])
    kinds = sorted(
        set(re.findall(r'"kind":"(__[a-z_]+)"', hlo)) | set(re.findall(r"custom_call_target=\"([^\"]+)\"", hlo))
    )
    suite.emit(
        "kernels",
        check="int8 decode HLO",
        full_precision_weight_copies=len(copies),
        examples=copies[:3],
        fusion_kinds=kinds[:12],
    )


def prepare_demo_inputs(path: Path = DEMO_INPUTS) -> Path:
    """On this (CPU) machine: the demo model's 20 held-out requests prepared (tokens, log-mel) into one npz, so the
    device needs no audio library."""
    from qwen_audio_jax.demo.bundle import DEMO_CLIPS, DEMO_MODEL, load_demo_items
    from qwen_audio_jax.jobs.generate import normalise_request, resolve_audio
    from qwen_audio_jax.text.processor import Processor

    processor = Processor.from_model_dir(DEMO_MODEL)
    items = load_demo_items()
    prepared = []
    for it in items:
        req = normalise_request(
            dict(it.request), chat=processor.is_chat, v1=False, job="generate", allowed=frozenset(it.request) | {"id"}
        )
        req = resolve_audio({k: v for k, v in req.items() if k != "id"}, DEMO_CLIPS)
        prepared.append(processor.prepare(req))
    frames = max(p.mel_lengths[0] for p in prepared) + 8
    tokens = np.zeros((len(prepared), max(p.num_tokens for p in prepared)), np.int32)
    for i, p in enumerate(prepared):
        tokens[i, : p.num_tokens] = p.token_ids
    path.parent.mkdir(exist_ok=True)
    np.savez_compressed(
        path,
        tokens=tokens,
        ntok=np.asarray([p.num_tokens for p in prepared], np.int32),
        mels=np.stack([p.mels[0][:, :frames] for p in prepared]),
        floor=np.asarray([p.mels[0][0, -1] for p in prepared], np.float32),
        mel_len=np.asarray([p.mel_lengths[0] for p in prepared], np.int32),
        expected=np.asarray([it.expected for it in items]),
    )
    return path
