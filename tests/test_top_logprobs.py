"""Top log-probs (a request's `top_logprobs`, the server's OpenAI field): each generated token's most likely
alternatives, from the engine's own prefill and decode programs (a traced flag: no new program), equal the
top of transformers' log_softmax over the full logits at that position, for requests with audio, through more
than one decode chunk; requests that do not ask get none and the same tokens as when nobody asks."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the parity oracle: pip install torch==2.13.0")

from qwen_audio_jax.generation.engine import Engine, EngineRequest, ListSource  # noqa: E402
from qwen_audio_jax.generation.options import GenerationOptions  # noqa: E402
from qwen_audio_jax.generation.steps import TOP_LOGPROBS  # noqa: E402
from qwen_audio_jax.text.processor import Processor  # noqa: E402
from tests._hf_models import GQA, build_hf_model, jax_twin  # noqa: E402
from tests._requests import varied_requests  # noqa: E402
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: E402,F401

pytestmark = pytest.mark.parity
NEW = 40  # more than one decode chunk (32)
ASK = {0: 5, 2: TOP_LOGPROBS, 3: 1}  # request index -> its top_logprobs (the others ask for none)
ATOL = 1e-4  # log-probs against transformers (README: fixed tolerances)


@pytest.fixture(scope="module")
def setup(qwen2_tokenizer):  # noqa: F811
    hf = build_hf_model(GQA, seed=11)
    config, params = jax_twin(hf)
    prepared = Processor(qwen2_tokenizer).prepare_many(varied_requests())
    return hf, Engine(config, params, batch_size=4), prepared


def _requests(prepared, ask: dict) -> list[EngineRequest]:
    options = GenerationOptions(max_new_tokens=NEW)
    return [
        EngineRequest(i, p, dataclasses.replace(options.for_request(None, str(i)), top_logprobs=ask.get(i, 0)))
        for i, p in enumerate(prepared)
    ]


def _hf_log_softmax(hf, prepared, generated) -> np.ndarray:
    """float64 log_softmax of transformers' logits at each generated position (prompt + generated, one pass)."""
    ids = torch.tensor([prepared.token_ids + generated])
    inputs = {"input_ids": ids}
    if prepared.mels:
        mel = np.stack(prepared.mels)
        inputs["input_features"] = torch.from_numpy(mel)
        inputs["feature_attention_mask"] = (
            torch.arange(mel.shape[-1])[None, :] < torch.tensor(prepared.mel_lengths)[:, None]
        ).long()
    with torch.no_grad():
        logits = hf(**inputs).logits[0].double()
    n = len(prepared.token_ids)
    return torch.log_softmax(logits, -1)[n - 1 : n - 1 + len(generated)].numpy()


def test_top_logprobs_are_the_top_of_the_full_log_softmax(setup):
    hf, engine, prepared = setup
    assert any(prepared[i].mels for i in ASK)  # audio requests among those that ask
    plain = dict(engine.run(ListSource(_requests(prepared, {})), return_logprobs=True))
    programs = engine.compiled_programs()
    hooked = {}

    def hook(tag, ids, lps, top):
        if top is not None:
            assert len(top) == len(ids)
            hooked.setdefault(tag, []).extend(top)

    got = dict(engine.run(ListSource(_requests(prepared, ASK)), return_logprobs=True, on_tokens=hook))
    assert engine.compiled_programs() == programs  # the same programs, nothing compiled for it
    for i, out in got.items():
        assert out.token_ids == plain[i].token_ids and out.logprobs == plain[i].logprobs
        if i not in ASK:
            assert out.top_logprobs is None and i not in hooked
            continue
        k, top = ASK[i], out.top_logprobs
        assert len(top) == len(out.token_ids) > 32 and all(len(step) == k for step in top)
        assert hooked[i] == top  # the hook gave the same, chunk by chunk
        want = _hf_log_softmax(hf, prepared[i], out.token_ids)
        for pos, step in enumerate(top):
            ids, values = [t for t, _ in step], np.array([v for _, v in step])
            # The k largest values, in order, and each id's own log-prob (a near-tie may swap equal values' ids).
            np.testing.assert_allclose(values, np.sort(want[pos])[::-1][:k], atol=ATOL, rtol=0)
            np.testing.assert_allclose(want[pos][ids], values, atol=ATOL, rtol=0)
            assert len(set(ids)) == k
            # Greedy: the chosen token is the most likely one.
            assert step[0][1] == pytest.approx(out.logprobs[pos], abs=1e-5)
