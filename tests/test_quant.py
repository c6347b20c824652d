"""Weight-only int8 (`--quantize int8`): the quantizer against a hand check, the int8 matmul against numpy, the
compiled decode program read for full-precision weight copies, and generation against the dequantized model."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from qwen_audio_jax.config import AudioEncoderConfig, DecoderConfig, ModelConfig, tiny
from qwen_audio_jax.generation.engine import Engine
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.model import quant
from qwen_audio_jax.model.params import abstract_params, build_module, init_params
from qwen_audio_jax.text.processor import Processor
from tests._requests import varied_requests
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: F401


def test_quantize_kernel_is_symmetric_per_output_channel():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((3, 16, 40)) * rng.uniform(0.001, 5, size=(3, 1, 40))).astype(np.float32)
    q, scale = jax.jit(quant.quantize_kernel)(jnp.asarray(w))
    q, scale = np.asarray(q), np.asarray(scale)
    assert q.dtype == np.int8 and scale.shape == (3, 40)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=1) / 127, rtol=1e-6)
    assert np.abs(q).max() == 127 and np.all(np.abs(q * scale[:, None, :] - w) <= scale[:, None, :] / 2 + 1e-7)


@pytest.mark.parametrize("shape", [(5, 300, 1000), (2, 64, 96)])
def test_int8_matmul_equals_the_dequantized_product(shape):
    """Blocked on XLA:CPU when the converted matrix exceeds a block (the first case: 1000 columns over blocks of
    the byte budget, the last block overlapping), one dot otherwise."""
    b, d_in, out = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((b, d_in)).astype(np.float32)
    q = rng.integers(-127, 128, size=(d_in, out)).astype(np.int8)
    scale = rng.uniform(0.001, 0.1, size=out).astype(np.float32)
    got = np.asarray(jax.jit(quant.int8_matmul)(jnp.asarray(x), jnp.asarray(q), jnp.asarray(scale)))
    want = x.astype(np.float64) @ (q.astype(np.float64) * scale)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _hlo_config() -> ModelConfig:
    """Every quantized matrix here is larger than one converted block on XLA:CPU, so none may appear whole."""
    return ModelConfig(
        audio=AudioEncoderConfig(d_model=64, num_layers=1, num_heads=4, ffn_dim=128),
        decoder=DecoderConfig(
            vocab_size=151936 + 160,
            hidden_size=768,
            intermediate_size=1536,
            num_layers=2,
            num_heads=12,
            num_kv_heads=12,
            head_dim=64,
        ),
    )


def _float_copies(hlo: str, shapes) -> list[str]:
    """HLO instructions whose result is a float array of one of `shapes` (a weight matrix converted whole)."""
    found = []
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%\S+ = (bf16|f16|f32)\[([\d,]*)\]", line)
        if m and tuple(int(d) for d in m.group(2).split(",") if d) in shapes:
            found.append(line.strip()[:160])
    return found


def test_decode_program_holds_no_full_precision_copy_of_an_int8_weight():
    """The compiled int8 decode step converts at most one block of a kernel at a time; the same check finds the
    whole-matrix copy that a naive `x @ w.astype(float)` makes (so it can fail)."""
    config = _hlo_config()
    flat = traverse_util.flatten_dict(abstract_params(config, quantized=True))
    shapes = set()
    for path, leaf in flat.items():
        if quant.is_quantized_kernel(path):
            assert leaf.dtype == jnp.int8
            shapes |= {tuple(leaf.shape), tuple(leaf.shape[-2:])}  # stacked [L, in, out] and one layer's [in, out]
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_params(config, quantized=True))
    engine = Engine(config, params, batch_size=2, quantized=True, max_len=256)
    state = jax.eval_shape(engine.programs.init)[0]
    hlo = engine.programs.lower_decode(state, chunk=4).compile().as_text()
    assert _float_copies(hlo, shapes) == []
    assert "s8[" in hlo  # the program really reads int8 weights

    w = jnp.zeros((768, 1536), jnp.int8)
    naive = jax.jit(lambda x, w: x @ w.astype(jnp.float32)).lower(jnp.zeros((2, 768)), w).compile().as_text()
    assert _float_copies(naive, {(768, 1536)})


@pytest.fixture(scope="module")
def prepared(qwen2_tokenizer):  # noqa: F811
    return Processor(qwen2_tokenizer).prepare_many(varied_requests())


def test_int8_generation_equals_the_dequantized_fp32_model(prepared):
    """Greedy tokens of the int8 engine equal the fp32 model whose kernels are the dequantized int8 values, run
    by the cache-free forward (an independent path: no pages, no int8 matmul)."""
    config = tiny()
    params = init_params(config, jax.random.PRNGKey(5))
    qparams = jax.jit(quant.quantize_params)(params)
    flat = traverse_util.flatten_dict(qparams)
    deq = {
        path[:-1] + ("kernel",): np.asarray(flat[path[:-1] + ("kernel",)], np.float32) * np.asarray(v)[..., None, :]
        for path, v in flat.items()
        if path[-1] == "scale" and quant.is_quantized_kernel(path[:-1] + ("kernel",))
    }
    reference = traverse_util.unflatten_dict({**traverse_util.flatten_dict(params), **deq})
    module = build_module(config)
    engine = Engine(config, qparams, batch_size=4, quantized=True, max_len=1024)
    prepared = prepared[:4]  # one clip, two clips, text only, a base prompt
    got = engine.generate(prepared, GenerationOptions(max_new_tokens=6))
    forward = jax.jit(lambda t, m, mel, n: module.apply({"params": reference}, t, m, mel, n))
    width = 512  # right-padded to one width: causal logits at a real position ignore the padding after it
    for p, out in zip(prepared, got):
        ids, want = list(p.token_ids), []
        mel = jnp.asarray(np.stack(p.mels)) if p.mels else None
        lengths = jnp.asarray(p.mel_lengths, jnp.int32) if p.mels else None
        for _ in range(len(out.token_ids)):
            t = np.full((1, width), config.pad_token_id, np.int32)
            t[0, : len(ids)] = ids
            mask = (np.arange(width) < len(ids))[None].astype(np.int32)
            nxt = int(jnp.argmax(forward(jnp.asarray(t), jnp.asarray(mask), mel, lengths)[0, len(ids) - 1]))
            want.append(nxt)
            ids.append(nxt)
        assert out.token_ids == want
