"""DPO/SFT losses: hand-computed values, the ln 2 start, and loss + gradients equal to PyTorch (transformers
forward for the log-probs, TRL's formulas)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.model.params import build_module
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.training.data import PreferenceExample
from qwen_audio_jax.training.loss import LossConfig, per_pair_losses, preference_loss
from qwen_audio_jax.training.pipeline import ExamplePreparer, batch_shape, collate_step
from qwen_audio_jax.training.step import StepConfig, TrainBatch, batch_loss
from tests._requests import synth_clip
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: F401

PI_C, PI_R, REF_C, REF_R, N_C, N_R = -12.0, -15.5, -13.0, -14.0, 6.0, 9.0


def _sigmoid_np(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize(
    "kind,beta,eps",
    [
        ("sigmoid", 0.1, 0.0),
        ("sigmoid", 0.5, 0.2),
        ("robust", 0.1, 0.1),
        ("hinge", 0.1, 0.0),
        ("hinge", 1.0, 0.0),
        ("ipo", 0.1, 0.0),
        ("sft", 0.1, 0.0),
    ],
)
def test_each_loss_matches_hand_computation(kind, beta, eps):
    h = (PI_C - PI_R) - (REF_C - REF_R)  # = 2.5
    want = {
        "sigmoid": -math.log(_sigmoid_np(beta * h)) * (1 - eps) - math.log(_sigmoid_np(-beta * h)) * eps,
        "robust": (-math.log(_sigmoid_np(beta * h)) * (1 - eps) + math.log(_sigmoid_np(-beta * h)) * eps)
        / (1 - 2 * eps),
        "hinge": max(0.0, 1 - beta * h),
        "ipo": ((PI_C / N_C - PI_R / N_R) - (REF_C / N_C - REF_R / N_R) - 1 / (2 * beta)) ** 2,
        "sft": -PI_C / N_C,
    }[kind]
    got = per_pair_losses(kind, *(jnp.asarray([v]) for v in (PI_C, PI_R, REF_C, REF_R, N_C, N_R)), beta, eps)
    assert float(got[0]) == pytest.approx(want, rel=1e-6)


def test_weighted_combination_and_rewards():
    cfg = LossConfig(types=("sigmoid", "sft"), weights=(1.0, 0.5), beta=0.1)
    args = [jnp.asarray([v, v + 1.0]) for v in (PI_C, PI_R, REF_C, REF_R, N_C, N_R)]
    loss, m = preference_loss(cfg, *args, jnp.asarray([1.0, 0.0]))  # the second pair is padding
    want = -math.log(_sigmoid_np(0.1 * 2.5)) + 0.5 * (-PI_C / N_C)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(m["rewards/chosen"]) == pytest.approx(0.1 * (PI_C - REF_C))
    assert float(m["rewards/rejected"]) == pytest.approx(0.1 * (PI_R - REF_R))
    assert float(m["rewards/margins"]) == pytest.approx(0.1 * (PI_C - REF_C - PI_R + REF_R))
    assert float(m["rewards/accuracies"]) == 1.0


@pytest.fixture(scope="module")
def pairs_batch(qwen2_tokenizer):  # noqa: F811
    processor = Processor(qwen2_tokenizer)
    examples = [
        PreferenceExample(
            "a",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "audio", "audio": synth_clip(1.3, 1)},
                            {"type": "text", "text": "What is it?"},
                        ],
                    }
                ]
            },
            "A low hum.",
            "A bird singing loudly in the morning.",
        ),
        PreferenceExample("b", {"messages": [{"role": "user", "content": "Say hi."}]}, "Hi!", "No."),
        PreferenceExample(
            "c",
            {"prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Caption:", "audio": [synth_clip(0.7, 2)]},
            " Bells.",
            " A long silence then bells.",
        ),
    ]
    prep = ExamplePreparer(examples, processor, preference=True)
    micro = [prep(i) for i in range(3)]
    arrays = collate_step([micro], batch_shape([micro], Buckets()), 151643, 128)
    return arrays


def _jax_batch(arrays):
    return TrainBatch(**{k: jnp.asarray(v[0]) for k, v in arrays.items()})


def test_policy_equal_reference_gives_ln2(pairs_batch):
    from qwen_audio_jax.config import tiny
    from qwen_audio_jax.model.params import init_params

    config = tiny()
    params = init_params(config, jax.random.PRNGKey(0))
    model = build_module(config)
    micro = _jax_batch(pairs_batch)
    cfg = StepConfig(LossConfig())
    from qwen_audio_jax.training.step import reference_logps

    ref = reference_logps(model, params, micro, cfg)
    loss, metrics = batch_loss(model, params, micro, ref, cfg)
    assert float(loss) == np.float32(math.log(2.0))
    assert float(metrics["rewards/margins"]) == 0.0


@pytest.mark.parity
@pytest.mark.parametrize("kind,max_completion", [("sigmoid", None), ("ipo", None), ("sigmoid", 16)])
def test_dpo_loss_and_gradients_match_pytorch(pairs_batch, kind, max_completion):
    """max_completion: the lm_head on the gathered completion positions only (what training runs)."""
    torch = pytest.importorskip("torch")
    from tests._hf_models import MHA, build_hf_model, jax_twin

    policy_hf, ref_hf = build_hf_model(MHA, seed=21), build_hf_model(MHA, seed=22)
    config, policy = jax_twin(policy_hf)
    _, ref_params = jax_twin(ref_hf)
    beta = 0.1
    arrays = pairs_batch
    tokens = arrays["tokens"][0].reshape(-1, arrays["tokens"].shape[-1])
    mask = arrays["mask"][0].reshape(tokens.shape)
    comp = arrays["completion_mask"][0].reshape(tokens.shape)
    mel, lengths = arrays["mel"][0], arrays["mel_lengths"][0]
    real = lengths > 0

    def torch_logps(model):
        fm = (torch.arange(3000)[None] < torch.from_numpy(np.concatenate([lengths[real]] * 2))[:, None]).long()
        full_mel = np.zeros((2 * real.sum(), 128, 3000), np.float32)
        full_mel[:, :, : mel.shape[-1]] = np.concatenate([mel[real]] * 2)
        logits = model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            input_features=torch.from_numpy(full_mel),
            feature_attention_mask=fm,
        ).logits
        logp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(
            -1, torch.from_numpy(tokens[:, 1:]).long()[..., None]
        )[..., 0]
        w = torch.from_numpy((comp[:, 1:] * mask[:, 1:]).astype(np.float32))
        return (logp * w).sum(-1), w.sum(-1)

    with torch.no_grad():
        ref_sum, _ = torch_logps(ref_hf)
    pol_sum, n = torch_logps(policy_hf)
    b = tokens.shape[0] // 2
    if kind == "sigmoid":
        h = (pol_sum[:b] - pol_sum[b:]) - (ref_sum[:b] - ref_sum[b:])
        loss_t = -torch.nn.functional.logsigmoid(beta * h).mean()
    else:
        h = (pol_sum[:b] / n[:b] - pol_sum[b:] / n[b:]) - (ref_sum[:b] / n[:b] - ref_sum[b:] / n[b:])
        loss_t = ((h - 1 / (2 * beta)) ** 2).mean()
    loss_t.backward()

    model = build_module(config)
    micro = _jax_batch(arrays)
    cfg = StepConfig(LossConfig(types=(kind,), beta=beta), frozen_encoder=False, max_completion=max_completion)
    from qwen_audio_jax.training.step import reference_logps

    ref = reference_logps(model, ref_params, micro, cfg)
    (loss_j, _), grads = jax.value_and_grad(lambda p: batch_loss(model, p, micro, ref, cfg), has_aux=True)(policy)
    assert float(loss_j) == pytest.approx(float(loss_t), rel=1e-5)

    hf = dict(policy_hf.named_parameters())
    checks = {
        "lm_head.weight": (grads["lm_head"]["kernel"].T, "language_model.lm_head.weight"),
        "down_proj L1": (
            grads["language_model"]["layers"]["mlp"]["down_proj"]["kernel"][1].T,
            "language_model.model.layers.1.mlp.down_proj.weight",
        ),
        "q_proj bias L0": (
            grads["language_model"]["layers"]["self_attn"]["q_proj"]["bias"][0],
            "language_model.model.layers.0.self_attn.q_proj.bias",
        ),
        "projector": (grads["multi_modal_projector"]["linear"]["kernel"].T, "multi_modal_projector.linear.weight"),
        "encoder fc1 L0": (grads["audio_tower"]["layers"]["fc1"]["kernel"][0].T, "audio_tower.layers.0.fc1.weight"),
        "embed_tokens": (
            grads["language_model"]["embed_tokens"]["embedding"],
            "language_model.model.embed_tokens.weight",
        ),
    }
    for label, (got, name) in checks.items():
        want = hf[name].grad.numpy()
        err = np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want)
        assert np.linalg.norm(want) > 0 and err <= 1e-5, (label, err)
