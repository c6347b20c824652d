"""Qwen-Audio (v1) `score` against the independent PyTorch oracle (tests/_v1_reference.py), below and above the
dynamic-NTK / logn threshold.

What the reference computes for a scoring forward ([QA] modeling_qwen.py QWenModel.forward, inference mode, no
cache): the whole sequence (prompt + completion) is one first forward, so `kv_seq_len` is the full length and
`ntk_alpha = get_ntk_alpha(full length)`; logn scales each query by log(i)/log(seq_length) at its 1-based position
i > seq_length. The tiny spec sets `seq_length = 32`, so a short sequence crosses it. The summed log-prob is
sum over completion positions t of log_softmax(logits[t - 1])[ids[t]], computed here from the oracle's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from tests._oracles import require

torch = require("torch", "the v1 oracle")

from qwen_audio_jax import api  # noqa: E402
from qwen_audio_jax.cli.main import main  # noqa: E402
from tests._requests import synth_clip  # noqa: E402
from tests._v1_checkpoint import make_v1_checkpoint_dir  # noqa: E402
from tests._v1_reference import V1Spec, init_random, ntk_alpha, prompt_logits  # noqa: E402

pytestmark = pytest.mark.parity
SPEC = V1Spec(seq_length=32)
SCORE_ATOL = 1e-4  # a sum of fp32 log-probs over a few tokens (logits agree to 1e-4)
TAGS = "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    root = tmp_path_factory.mktemp("v1score")
    oracle = init_random(SPEC, seed=5)
    hf = make_v1_checkpoint_dir(root / "hf", model=oracle, shards=1, chat=False)
    assert main(["convert", str(hf), str(root / "jax"), "--no-progress"]) == 0
    clips = {}
    for name, sec, seed in (("short", 0.5, 1), ("mid", 1.37, 2), ("long", 2.41, 3)):
        clips[name] = root / f"{name}.wav"
        sf.write(clips[name], synth_clip(sec, seed), 16000)  # 16 kHz PCM_16: both loaders read it alike
    return oracle, api.load(root / "jax"), clips


def _oracle_score(oracle, model, request: dict, completion: str, clips: list) -> tuple[float, int, int]:
    """(summed log-prob, completion tokens, full length) from the oracle's logits over prompt + completion."""
    p = model.processor.prepare({**request, "completion": completion})
    ids = p.token_ids
    n_comp = len(model.tokenizer.encode(completion))
    assert p.completion_mask == [0] * (len(ids) - n_comp) + [1] * n_comp
    wavs = [sf.read(c, dtype="float32")[0] for c in clips]
    logp = torch.log_softmax(prompt_logits(oracle, ids, wavs), -1)
    total = sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n_comp, len(ids)))
    return total, n_comp, len(ids)


def test_score_matches_the_oracle_below_and_above_the_ntk_threshold(v1):
    oracle, model, clips = v1
    short, mid, long_ = (str(clips[k]) for k in ("short", "mid", "long"))
    text_prompt = "The quick brown fox jumps over the lazy dog near"  # ~10 tokens
    cases = [
        # (request, completion, clips): one request per case, all scored in one batch (rows of different lengths)
        ({"id": "text-below", "prompt": text_prompt}, " the river bank.", []),
        # Prompt alone under 32 tokens, prompt + completion over it: alpha comes from the full sequence.
        (
            {"id": "crosses", "prompt": text_prompt + " a quiet river bank, where the old miller"},
            " once kept his wheel turning all day long, and the children played by the water.",
            [],
        ),
        ({"id": "audio-short", "prompt": f"<audio>{short}</audio>{TAGS}"}, " A tone.", [short]),
        ({"id": "audio-mid", "prompt": f"<audio>{mid}</audio>{TAGS}"}, " A humming tone.", [mid]),
        ({"id": "audio-long", "prompt": f"<audio>{long_}</audio>{TAGS}"}, " A long hum, then silence.", [long_]),
        (
            {"id": "two-clips", "prompt": f"<audio>{short}</audio><audio>{long_}</audio>What differs?"},
            " The second is longer.",
            [short, long_],
        ),
    ]
    got = {r["id"]: r for r in api.score(model, [{**r, "completion": c} for r, c, _ in cases], batch_size=4)}
    alphas = {}
    for request, completion, paths in cases:
        rid = request["id"]
        want, n, full = _oracle_score(oracle, model, request, completion, paths)
        prompt_len = full - n
        alphas[rid] = (ntk_alpha(prompt_len, SPEC.seq_length), ntk_alpha(full, SPEC.seq_length))
        assert got[rid]["error"] is None, got[rid]
        assert got[rid]["num_tokens"] == n > 0, rid
        assert abs(got[rid]["logprob"] - want) <= SCORE_ATOL, (rid, got[rid]["logprob"], want, full)
    # The cases cover: no scaling at all, a sequence whose prompt alone is under the threshold but whose full
    # length is over it (alpha 1 vs 3: alpha must come from the full length), and alpha 3 and 7 with audio.
    assert alphas["text-below"] == (1, 1)
    assert alphas["crosses"][0] == 1 and alphas["crosses"][1] > 1, alphas
    assert alphas["audio-short"] == (1, 1) and alphas["audio-mid"][1] == 3 and alphas["audio-long"][1] == 7, alphas


def test_score_cli_on_v1_equals_the_oracle(v1, tmp_path):
    """The CLI path (the driver, one request per line) gives the same numbers as the oracle."""
    oracle, model, clips = v1
    long_ = str(clips["long"])
    request = {"id": "s", "prompt": f"<audio>{long_}</audio>What is it?"}
    completion = " A steady tone with a slow vibrato."
    (tmp_path / "in.jsonl").write_text(json.dumps({**request, "completion": completion}) + "\n")
    args = ["score", "--model", str(model.model_dir), "--input", str(tmp_path / "in.jsonl")]
    assert main(args + ["--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    (line,) = map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())
    want, n, full = _oracle_score(oracle, model, request, completion, [long_])
    assert ntk_alpha(full, SPEC.seq_length) > 1
    assert line["error"] is None and line["num_tokens"] == n
    assert np.isclose(line["logprob"], want, rtol=0, atol=SCORE_ATOL), (line["logprob"], want)
