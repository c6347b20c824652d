"""Both attention implementations give the same outputs on CPU in fp32 (1e-5): the function alone (grouped KV
heads, a fully masked query row, decode's one query over a long cache), and the whole model (encoder and decoder,
the no-cache forward and the engine's prefill and decode)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax.config import tiny
from qwen_audio_jax.generation.engine import Engine
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.model.attention import attend, resolve
from qwen_audio_jax.model.params import build_module, init_params
from qwen_audio_jax.text.processor import Processor
from tests._requests import varied_requests
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: F401

ATOL = 1e-5


@pytest.mark.parametrize("b,t,s,n,k,h", [(2, 7, 7, 4, 2, 16), (3, 1, 40, 6, 6, 8), (1, 5, 5, 8, 1, 32)])
def test_implementations_agree(b, t, s, n, k, h):
    rng = np.random.default_rng(b * 100 + s)
    q = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
    kk = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
    mask = jnp.asarray(rng.random((b, t, s)) > 0.3)
    mask = mask.at[0, 0].set(False)  # a fully masked query row (a padding query) must stay finite
    a = attend(q, kk, v, mask, h**-0.5, "xla")
    d = attend(q, kk, v, mask, h**-0.5, "dot_product")
    assert np.isfinite(np.asarray(a)).all() and np.isfinite(np.asarray(d)).all()
    np.testing.assert_allclose(np.asarray(d), np.asarray(a), atol=ATOL, rtol=0)


def test_auto_is_the_backends_choice():
    assert resolve("auto") == ("dot_product" if jax.default_backend() == "gpu" else "xla")
    assert resolve("dot_product") == "dot_product"
    with pytest.raises(ValueError):
        resolve("flash")


def test_model_and_engine_agree_across_implementations(qwen2_tokenizer):  # noqa: F811
    config = tiny()
    params = init_params(config, jax.random.PRNGKey(5))
    prepared = Processor(qwen2_tokenizer).prepare_many(varied_requests())[:4]
    p = prepared[0]
    tokens = jnp.asarray([p.token_ids])
    mel = jnp.asarray(np.stack(p.mels)[:, :, :1024])
    lengths = jnp.asarray(p.mel_lengths)
    logits = {
        impl: np.asarray(
            build_module(config, attention=impl).apply({"params": params}, tokens, tokens * 0 + 1, mel, lengths)
        )
        for impl in ("xla", "dot_product")
    }
    np.testing.assert_allclose(logits["dot_product"], logits["xla"], atol=1e-4, rtol=0)
    opts = GenerationOptions(max_new_tokens=12)
    runs = {
        impl: Engine(config, params, batch_size=2, attention=impl).generate(prepared, opts)
        for impl in ("xla", "dot_product")
    }
    assert [o.token_ids for o in runs["dot_product"]] == [o.token_ids for o in runs["xla"]]
