"""DPO/SFT losses against TRL's `DPOTrainer` loss functions (trl 0.24.0, pinned in the test extra: its
`dpo_loss` is the last with cDPO label smoothing on `sigmoid`, the formula this project follows) and against numbers
worked out by hand; loss + gradients of a real batch (policy and reference different models) against
transformers' forward with TRL's loss on top."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.model.params import build_module
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.training.data import PreferenceExample
from qwen_audio_jax.training.loss import LossConfig, preference_loss
from qwen_audio_jax.training.pipeline import ExamplePreparer, batch_shape, collate_step
from qwen_audio_jax.training.step import StepConfig, TrainBatch, batch_loss, reference_logps
from tests._oracles import require
from tests._requests import synth_clip
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: F401

# Four pairs: summed log-probs of policy / reference, chosen / rejected, and completion token counts. The fourth
# row is a padding pair in the tests that pass `active`.
PI_C = [-12.0, -20.0, -7.5, -30.0]
PI_R = [-15.5, -18.0, -9.0, -31.0]
REF_C = [-13.0, -19.0, -8.0, -29.0]
REF_R = [-14.0, -19.5, -8.5, -33.0]
N_C = [6.0, 11.0, 3.0, 14.0]
N_R = [9.0, 8.0, 5.0, 12.0]


def _trl_losses(kind: str, beta: float, eps: float, pi_c, pi_r, ref_c, ref_r, nll=None):
    """(per-pair losses, chosen rewards, rejected rewards) from trl 0.24.0's `DPOTrainer.dpo_loss`, called on a
    stand-in trainer holding exactly the attributes it reads. `nll`: TRL's `nll_loss` for `sft`."""
    torch = require("torch", "the DPO parity oracle")
    trl_dpo = require("trl.trainer.dpo_trainer", "the DPO loss oracle (trl==0.24.0 in the test extra)")
    from trl.trainer.dpo_config import FDivergenceType

    trainer = SimpleNamespace(
        beta=beta,
        label_smoothing=eps,
        reference_free=False,
        f_divergence_type=FDivergenceType.REVERSE_KL,
        f_divergence_params=None,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        args=SimpleNamespace(discopop_tau=0.05),
    )
    t = lambda x: x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float64)  # noqa: E731
    out = {"nll_loss": t(nll)} if nll is not None else None
    return trl_dpo.DPOTrainer.dpo_loss(trainer, t(pi_c), t(pi_r), t(ref_c), t(ref_r), kind, out)


def _ours(types, weights, beta, eps, active=(1.0, 1.0, 1.0, 1.0)):
    cfg = LossConfig(types=tuple(types), weights=tuple(weights), beta=beta, label_smoothing=eps)
    args = [jnp.asarray(v, jnp.float32) for v in (PI_C, PI_R, REF_C, REF_R, N_C, N_R)]
    return preference_loss(cfg, *args, jnp.asarray(active, jnp.float32))


@pytest.mark.parametrize(
    "kind,beta,eps",
    [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("robust", 0.1, 0.1), ("hinge", 0.1, 0.0), ("hinge", 1.0, 0.0)],
)
def test_each_loss_equals_trl(kind, beta, eps):
    losses, chosen, rejected = _trl_losses(kind, beta, eps, PI_C, PI_R, REF_C, REF_R)
    loss, m = _ours([kind], [1.0], beta, eps)
    assert float(loss) == pytest.approx(float(losses.mean()), rel=1e-6, abs=1e-7)
    assert float(m["rewards/chosen"]) == pytest.approx(float(chosen.mean()), rel=1e-6)
    assert float(m["rewards/rejected"]) == pytest.approx(float(rejected.mean()), rel=1e-6)
    assert float(m["rewards/margins"]) == pytest.approx(float((chosen - rejected).mean()), rel=1e-6)
    assert float(m["rewards/accuracies"]) == float((chosen > rejected).double().mean())


def test_ipo_equals_trl_on_length_normalised_logps():
    """TRL divides each sequence's summed log-prob by its completion length before `dpo_loss` when the loss is
    IPO (`concatenated_forward`: `all_logps / loss_mask.sum(-1)`, the reference pass too)."""
    per = lambda s, n: [a / b for a, b in zip(s, n)]  # noqa: E731
    losses, _, _ = _trl_losses("ipo", 0.1, 0.0, per(PI_C, N_C), per(PI_R, N_R), per(REF_C, N_C), per(REF_R, N_R))
    loss, _ = _ours(["ipo"], [1.0], 0.1, 0.0)
    assert float(loss) == pytest.approx(float(losses.mean()), rel=1e-6)


def test_weighted_sum_with_sft_equals_trl_and_skips_padding_pairs():
    """`loss_type=["sigmoid", "sft"]`, `loss_weights=[1, 0.5]` (TRL's MPO form): TRL's nll_loss is the
    cross-entropy averaged over every chosen completion token of the batch (token-weighted); the fourth pair is
    padding and must change nothing."""
    k = 3
    nll = -sum(PI_C[:k]) / sum(N_C[:k])
    sig, _, _ = _trl_losses("sigmoid", 0.1, 0.0, PI_C[:k], PI_R[:k], REF_C[:k], REF_R[:k])
    sft, _, _ = _trl_losses("sft", 0.1, 0.0, PI_C[:k], PI_R[:k], REF_C[:k], REF_R[:k], nll=nll)
    loss, m = _ours(["sigmoid", "sft"], [1.0, 0.5], 0.1, 0.0, active=(1.0, 1.0, 1.0, 0.0))
    assert float(loss) == pytest.approx(float((sig + 0.5 * sft).mean()), rel=1e-6)
    assert float(m["logps/chosen"]) == pytest.approx(np.mean(PI_C[:k]), rel=1e-6)


def test_losses_worked_out_by_hand():
    """Single pairs whose values are exact by hand. h = (pi_c - pi_r) - (ref_c - ref_r)."""

    def one(kind, beta, eps, pi_c, pi_r, ref_c, ref_r, n_c=1.0, n_r=1.0):
        cfg = LossConfig(types=(kind,), weights=(1.0,), beta=beta, label_smoothing=eps)
        args = [jnp.asarray([v], jnp.float32) for v in (pi_c, pi_r, ref_c, ref_r, n_c, n_r)]
        return float(preference_loss(cfg, *args, jnp.ones(1))[0])

    ln2 = 0.6931471805599453
    assert one("sigmoid", 0.1, 0.0, -5.0, -5.0, -9.0, -9.0) == pytest.approx(ln2, rel=1e-7)  # h = 0
    assert one("sigmoid", 0.1, 0.3, -5.0, -5.0, -9.0, -9.0) == pytest.approx(ln2, rel=1e-7)  # any eps at h = 0
    # h = 10, beta = 0.1: -log(sigmoid(1)) = log(1 + e^-1) = 0.31326168751822286
    assert one("sigmoid", 0.1, 0.0, -2.0, -12.0, -5.0, -5.0) == pytest.approx(0.31326168751822286, rel=1e-6)
    # eps = 0.25: 0.75 * log(1 + e^-1) + 0.25 * log(1 + e) = 0.75 * 0.3132617 + 0.25 * 1.3132617 = 0.5632617
    assert one("sigmoid", 0.1, 0.25, -2.0, -12.0, -5.0, -5.0) == pytest.approx(0.5632616875182229, rel=1e-6)
    assert one("hinge", 0.1, 0.0, -2.0, -12.0, -5.0, -5.0) == 0.0  # relu(1 - 1)
    assert one("hinge", 0.1, 0.0, -2.0, -7.0, -5.0, -5.0) == pytest.approx(0.5)  # relu(1 - 0.5)
    # IPO, per token: chosen -6/3 = -2, rejected -8/4 = -2, reference 0: h = 0, loss = (0 - 1/(2*0.5))^2 = 1
    assert one("ipo", 0.5, 0.0, -6.0, -8.0, 0.0, 0.0, 3.0, 4.0) == pytest.approx(1.0)
    # robust at h = 10, beta 0.1, eps 0.25: (0.75 * 0.3132617 - 0.25 * 1.3132617) / 0.5 = -0.1867383
    assert one("robust", 0.1, 0.25, -2.0, -12.0, -5.0, -5.0) == pytest.approx(-0.1867383124817772, rel=1e-6)


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


def _jax_batch(arrays):
    return TrainBatch(**{k: jnp.asarray(v[0]) for k, v in arrays.items()})


@pytest.mark.parity
@pytest.mark.parametrize(
    "types,weights,eps,max_completion",
    [
        (("sigmoid",), (1.0,), 0.2, None),  # loss.label_smoothing: cDPO
        (("ipo",), (1.0,), 0.0, None),
        (("robust",), (1.0,), 0.1, 16),
        (("sigmoid", "sft"), (1.0, 0.5), 0.0, 16),  # max_completion: the lm_head on completion positions only
    ],
)
def test_dpo_loss_and_gradients_match_pytorch(pairs_batch, types, weights, eps, max_completion):
    """Policy and reference are different models (seeds 21 and 22): transformers' forward gives the log-probs,
    TRL's `dpo_loss` the loss (TRL's length normalisation for IPO, its token-averaged cross-entropy for SFT);
    loss and gradients equal ours."""
    torch = require("torch", "the DPO parity oracle")
    F = torch.nn.functional
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
    b = tokens.shape[0] // 2
    labels = torch.from_numpy(tokens[:, 1:]).long()
    w = torch.from_numpy((comp[:, 1:] * mask[:, 1:]).astype(np.float32))

    def torch_logits(model):
        fm = (torch.arange(3000)[None] < torch.from_numpy(np.concatenate([lengths[real]] * 2))[:, None]).long()
        full_mel = np.zeros((2 * real.sum(), 128, 3000), np.float32)
        full_mel[:, :, : mel.shape[-1]] = np.concatenate([mel[real]] * 2)
        return model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            input_features=torch.from_numpy(full_mel),
            feature_attention_mask=fm,
        ).logits.float()[:, :-1]

    def sums(logits):
        return (torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0] * w).sum(-1)

    with torch.no_grad():
        ref_sum = sums(torch_logits(ref_hf))
    logits = torch_logits(policy_hf)
    pol_sum, n = sums(logits), w.sum(-1)
    loss_t = 0.0
    for kind, weight in zip(types, weights):
        pol, ref = (pol_sum / n, ref_sum / n) if kind == "ipo" else (pol_sum, ref_sum)
        nll = None
        if kind == "sft":  # TRL: cross-entropy over the chosen rows' completion tokens, flattened
            chosen = w[:b].bool()
            nll = F.cross_entropy(logits[:b][chosen], labels[:b][chosen])
        losses, _, _ = _trl_losses(kind, beta, eps, pol[:b], pol[b:], ref[:b], ref[b:], nll=nll)
        loss_t = loss_t + weight * losses.mean()
    loss_t.backward()

    model = build_module(config)
    micro = _jax_batch(arrays)
    loss_cfg = LossConfig(types=types, weights=weights, beta=beta, label_smoothing=eps)
    cfg = StepConfig(loss_cfg, frozen_encoder=False, max_completion=max_completion)
    ref = reference_logps(model, ref_params, micro, cfg)
    assert float(jnp.abs(ref - jnp.asarray(ref_sum.numpy())).max()) <= 1e-4  # the reference pass, separately
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
