"""Greedy generation equals transformers' `generate(do_sample=False)`: on a left-padded batch of varied requests,
and request by request through recycled engine slots with per-request budgets."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the parity oracle: pip install torch==2.13.0")

from qwen_audio_jax.generation.engine import Engine, EngineRequest, ListSource  # noqa: E402
from qwen_audio_jax.generation.options import GenerationOptions  # noqa: E402
from qwen_audio_jax.text.processor import Processor, collate  # noqa: E402
from tests._hf_models import SPECS, build_hf_model, jax_twin  # noqa: E402
from tests._requests import varied_requests  # noqa: E402
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: E402,F401

pytestmark = pytest.mark.parity

NEW_TOKENS = 64
STOP = (151645, 151643)


@pytest.fixture(scope="module")
def prepared(qwen2_tokenizer):  # noqa: F811
    processor = Processor(qwen2_tokenizer)
    return processor.prepare_many(varied_requests())


def _hf_generate(hf, prepared, max_new_tokens=NEW_TOKENS, **kw):
    batch = collate(prepared, pad_id=151643, padding_side="left")
    inputs = dict(
        input_ids=torch.from_numpy(batch.tokens).long(), attention_mask=torch.from_numpy(batch.attention_mask).long()
    )
    if batch.mel is not None:
        inputs["input_features"] = torch.from_numpy(batch.mel)
        inputs["feature_attention_mask"] = (
            torch.arange(3000)[None, :] < torch.from_numpy(batch.mel_lengths)[:, None]
        ).long()
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=list(STOP), pad_token_id=151643, **kw)
    new = out[:, batch.tokens.shape[1] :].numpy()
    results = []
    for row in new:
        ids = row.tolist()
        end = next((i + 1 for i, t in enumerate(ids) if t in STOP), len(ids))
        results.append(ids[:end])
    return results


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def models(request):
    hf = build_hf_model(request.param, seed=11)
    config, params = jax_twin(hf)
    return hf, Engine(config, params, batch_size=8)


def test_greedy_matches_transformers(models, prepared):
    hf, engine = models
    assert all(not isinstance(p, Exception) for p in prepared)
    want = _hf_generate(hf, prepared, do_sample=False)
    got = engine.generate(prepared, GenerationOptions(max_new_tokens=NEW_TOKENS, stop_ids=STOP))
    assert [g.token_ids for g in got] == want
    assert sum(len(w) for w in want) >= 5 * NEW_TOKENS  # most rows really generated 64 tokens
    for g in got:
        assert g.finish_reason == ("stop" if g.token_ids[-1] in STOP else "length")


def test_recycled_slots_match_transformers(models, prepared):
    """Two slots, six requests with their own budgets: each is prefilled into whichever slot frees up while the
    other keeps decoding, and its tokens equal transformers' for that request alone."""
    hf, engine = models
    budgets = [64, 5, 33, 1, 48, 12]
    small = Engine(engine.config, engine.params, batch_size=2)
    opts = GenerationOptions(max_new_tokens=NEW_TOKENS, stop_ids=STOP)
    reqs = [
        EngineRequest(i, p, opts.for_request({"max_new_tokens": n}, str(i)))
        for i, (p, n) in enumerate(zip(prepared, budgets))
    ]
    got = dict(small.run(ListSource(reqs)))
    assert small.stats.prefills >= 4
    for i, (p, n) in enumerate(zip(prepared, budgets)):
        assert got[i].token_ids == _hf_generate(hf, [p], max_new_tokens=n, do_sample=False)[0], i


def test_top_k_1_sampling_is_greedy(models, prepared):
    _, engine = models
    greedy = engine.generate(prepared, GenerationOptions(max_new_tokens=16, stop_ids=STOP))
    sampled = engine.generate(
        prepared, GenerationOptions(max_new_tokens=16, stop_ids=STOP, temperature=0.7, top_k=1, seed=123)
    )
    assert [g.token_ids for g in sampled] == [g.token_ids for g in greedy]


def test_repetition_penalty_and_min_new_tokens_match_transformers(models, prepared):
    hf, engine = models
    want = _hf_generate(hf, prepared[:3], do_sample=False, repetition_penalty=1.3, min_new_tokens=NEW_TOKENS)
    got = engine.generate(
        prepared[:3],
        GenerationOptions(max_new_tokens=NEW_TOKENS, stop_ids=STOP, repetition_penalty=1.3, min_new_tokens=NEW_TOKENS),
    )
    assert [g.token_ids for g in got] == want
    assert all(len(g.token_ids) == NEW_TOKENS for g in got)


def test_logprobs_are_model_log_softmax(models, prepared):
    """Returned log-probs equal transformers' log_softmax of the logits at each generated position."""
    hf, engine = models
    out = engine.generate(prepared[2:3], GenerationOptions(max_new_tokens=8, stop_ids=STOP, return_logprobs=True))[0]
    p = prepared[2]
    ids = torch.tensor([p.token_ids + out.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(hf(input_ids=ids).logits[0].float(), -1).numpy()
    n = len(p.token_ids)
    want = [logp[n - 1 + i, t] for i, t in enumerate(out.token_ids)]
    np.testing.assert_allclose(out.logprobs, want, atol=1e-4, rtol=0)
