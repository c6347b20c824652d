"""The `train` subcommand with a run config that sets `reference.model`, `loss.label_smoothing` and
`optim.encoder_lr_multiplier` (keys no other test sets), and each one's effect after one DPO step:

* reference.model: the step-1 reference log-prob of the chosen completion (read back from the metrics) is the
  other model's score of that sequence, not the policy's;
* loss.label_smoothing: the step-1 loss is cDPO's (1 - eps) -logsigmoid(m) + eps -logsigmoid(-m) of the
  logged margin m (TRL's formula, tests/test_dpo_parity.py checks it against TRL itself);
* optim.encoder_lr_multiplier: Adam's first step moves every weight by about its learning rate (m / sqrt(v) =
  g / |g|), so the encoder's weights move by half as much as the language model's."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax import api
from qwen_audio_jax.cli.main import main
from tests._model_dirs import build_tiny_model_dir
from tests._synthetic_prefs import synth

BETA, EPS, LR, ENCODER_MULT = 0.5, 0.2, 1e-3, 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("train_config")
    policy, reference = build_tiny_model_dir(work / "policy", seed=0), build_tiny_model_dir(work / "ref", seed=5)
    sf.write(work / "clip.wav", synth(0, np.random.default_rng(3)), 16000)
    prompt = {
        "messages": [
            {"role": "user", "content": [{"type": "audio", "audio": "clip.wav"}, {"type": "text", "text": "Which?"}]}
        ]
    }
    pair = {"id": "p0", **prompt, "chosen": "a low hum", "rejected": "a rising chirp"}
    (work / "prefs.jsonl").write_text(json.dumps(pair) + "\n")
    (work / "run.yaml").write_text(
        f"""model: {policy}
output_dir: {work / "run"}
data:
  train: {work / "prefs.jsonl"}
loss:
  types: [sigmoid]
  beta: {BETA}
  label_smoothing: {EPS}
reference:
  mode: model
  model: {reference}
optim:
  learning_rate: {LR}
  min_learning_rate: {LR}
  warmup_steps: 0
  weight_decay: 0.0
  clip_norm: 0.0
  freeze_audio_encoder: false
  encoder_lr_multiplier: {ENCODER_MULT}
train:
  steps: 1
  batch_size: 1
  num_threads: 1
checkpoint:
  every: 100
"""
    )
    assert main(["train", "--config", str(work / "run.yaml"), "--no-progress"]) == 0
    (metrics,) = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    return work, policy, reference, prompt, pair, metrics


def test_reference_model_is_the_configured_one(trained):
    work, policy, reference, prompt, pair, m = trained
    suffix = "<|im_end|>"  # every training completion ends with the model's end-of-turn token
    # The scorer gets the clip's absolute path (training resolves "clip.wav" next to the data file).
    request = json.loads(json.dumps(prompt).replace('"clip.wav"', json.dumps(str(work / "clip.wav"))))
    request["completion"] = pair["chosen"] + suffix
    scores = {
        name: api.score(api.load(path), [{"id": "c", **request}], batch_size=1)[0]["logprob"]
        for name, path in (("policy", policy), ("reference", reference))
    }
    for score in scores.values():
        assert score is not None
    assert m["logps/chosen"] == pytest.approx(scores["policy"], abs=1e-4)
    ref_chosen = m["logps/chosen"] - m["rewards/chosen"] / BETA
    assert ref_chosen == pytest.approx(scores["reference"], abs=1e-4)
    assert abs(scores["reference"] - scores["policy"]) > 0.1  # the two models really differ


def test_label_smoothing_is_applied(trained):
    m = trained[-1]
    margin = m["rewards/margins"]  # beta * h for the one pair

    def nls(x):
        return math.log1p(math.exp(-x))  # -logsigmoid(x)

    want = (1 - EPS) * nls(margin) + EPS * nls(-margin)
    assert m["loss"] == pytest.approx(want, rel=1e-5)
    assert abs(want - nls(margin)) > 1e-3  # label smoothing 0 would give a different loss


def test_encoder_lr_multiplier_scales_the_encoder_step(trained):
    work, policy, *_ = trained
    before, after = api.load(policy).params, api.load(work / "run" / "model").params
    delta = jax.tree_util.tree_map(lambda a, b: np.abs(np.asarray(b) - np.asarray(a)), before, after)
    encoder = np.median(delta["audio_tower"]["layers"]["fc1"]["kernel"])
    decoder = np.median(delta["language_model"]["layers"]["mlp"]["up_proj"]["kernel"])
    projector = np.median(delta["multi_modal_projector"]["linear"]["kernel"])
    assert decoder == pytest.approx(LR, rel=0.02) and projector == pytest.approx(LR, rel=0.02)
    assert encoder == pytest.approx(ENCODER_MULT * LR, rel=0.02)
