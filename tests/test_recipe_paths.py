"""The 7B recipe's code paths (configs/dpo_qwen2_audio_7b.yaml: grad_accum 4, remat full, bf16 compute) on the
tiny model: gradient accumulation against one big micro-batch, remat against none, bf16 against fp32.

The comparisons are between two computations that must agree by arithmetic (a mean of equal-sized micro-batch
means is the mean; rematerialisation recomputes the same ops), not against values recorded from the code."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.bundled import write_tokenizer_dir
from qwen_audio_jax.config import tiny
from qwen_audio_jax.model.params import build_module, init_params
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.text.tokenizer import Qwen2AudioTokenizer
from qwen_audio_jax.training.data import PreferenceExample
from qwen_audio_jax.training.loss import LossConfig
from qwen_audio_jax.training.optimizer import OptimConfig, make_optimizer
from qwen_audio_jax.training.pipeline import ExamplePreparer, batch_shape, collate_step
from qwen_audio_jax.training.step import StepConfig, TrainBatch, TrainState, batch_loss, reference_logps, train_step
from tests._requests import synth_clip

CONFIG = tiny()
PAD = 151643
FP32_REL = 1e-5  # fp32 rounding of sums taken in a different order
REMAT_REL = 1e-6


def _examples():
    """8 pairs of different prompt / completion lengths, 5 with a clip of a different length."""
    out = []
    for i in range(8):
        words = " ".join(["very"] * i)
        if i % 3 == 2:
            request = {"messages": [{"role": "user", "content": f"Say something {words} short."}]}
        else:
            clip = {"type": "audio", "audio": synth_clip(0.4 + 0.23 * i, i + 1)}
            request = {"messages": [{"role": "user", "content": [clip, {"type": "text", "text": f"What is it {i}?"}]}]}
        out.append(PreferenceExample(f"e{i}", request, f"A {words} low hum.", f"Birds {words}, then a long silence."))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    processor = Processor(Qwen2AudioTokenizer.from_dir(write_tokenizer_dir(tmp_path_factory.mktemp("tok"))))
    examples = _examples()
    prepared = {
        pref: [ExamplePreparer(examples, processor, preference=pref)(i) for i in range(8)] for pref in (True, False)
    }
    policy = init_params(CONFIG, jax.random.PRNGKey(0))
    reference = init_params(CONFIG, jax.random.PRNGKey(1))
    return prepared, policy, reference


def _batch(prepared: list, groups: list[list[int]], preference: bool) -> TrainBatch:
    """The same pairs as A micro-batches (`groups`), at the shape of all 8 together."""
    shape = batch_shape([prepared], Buckets())
    micro = [[prepared[i] for i in g] for g in groups]
    arrays = collate_step(micro, shape, PAD, CONFIG.audio.num_mel_bins, preference=preference)
    return TrainBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})


def _capture_grads() -> optax.GradientTransformation:
    """An 'optimizer' whose state is the last gradient it was given (and whose update is zero)."""
    return optax.GradientTransformation(
        lambda p: jax.tree_util.tree_map(jnp.zeros_like, p),
        lambda g, s, p=None: (jax.tree_util.tree_map(jnp.zeros_like, g), g),
    )


def _step(module, tx, cfg, params, batch, reference):
    state = TrainState(jnp.int32(0), params, tx.init(params), jax.random.PRNGKey(0))
    fn = jax.jit(functools.partial(train_step, module, tx, lambda s: jnp.float32(1e-3), cfg))
    new, metrics = fn(state, batch, reference)
    return new, {k: float(v) for k, v in metrics.items()}


def _rel(a, b) -> float:
    """Largest per-leaf relative difference ||a - b|| / ||b|| over a param tree."""
    errs = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(
            lambda x, y: float(jnp.linalg.norm((x - y).ravel()) / jnp.maximum(jnp.linalg.norm(y.ravel()), 1e-30)),
            a,
            b,
        )
    )
    return max(errs)


def _nonzero(tree) -> bool:
    return all(float(jnp.abs(x).max()) > 0 for x in jax.tree_util.tree_leaves(tree))


def test_dpo_grad_accum_2x4_equals_1x8(setup):
    """Loss, gradients and AdamW-updated params of 2 micro-batches of 4 pairs equal one micro-batch of 8."""
    prepared, policy, reference = setup
    module = build_module(CONFIG, inference_scaling=False)
    cfg = StepConfig(LossConfig(), frozen_encoder=False)
    one = _batch(prepared[True], [list(range(8))], True)
    two = _batch(prepared[True], [[0, 1, 2, 3], [4, 5, 6, 7]], True)
    tx = _capture_grads()
    s1, m1 = _step(module, tx, cfg, policy, one, reference)
    s2, m2 = _step(module, tx, cfg, policy, two, reference)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=FP32_REL)
    assert m1["tokens"] == m2["tokens"] and m1["rewards/margins"] == pytest.approx(m2["rewards/margins"], rel=1e-4)
    # The frozen reference differs from the policy, so the loss is not ln 2 and every gradient is live.
    assert abs(m1["loss"] - np.log(2)) > 1e-3
    assert _nonzero(s1.opt_state["language_model"]) and _nonzero(s1.opt_state["audio_tower"])
    assert _rel(s2.opt_state, s1.opt_state) <= FP32_REL
    adamw, _ = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=0, freeze_audio_encoder=False), 10, 2)
    p1, _ = _step(module, adamw, cfg, policy, one, reference)
    p2, _ = _step(module, adamw, cfg, policy, two, reference)
    assert _rel(p2.params, p1.params) <= FP32_REL


def test_sft_grad_accum_2x4_equals_1x8(setup):
    """SFT's loss is token-weighted: with micro-batches of unequal token counts, accumulation must weight each
    micro-batch by its tokens to equal one big micro-batch."""
    prepared, policy, _ = setup
    module = build_module(CONFIG, inference_scaling=False)
    cfg = StepConfig(LossConfig(types=("sft",), weights=(1.0,)), frozen_encoder=False)
    one = _batch(prepared[False], [list(range(8))], False)
    two = _batch(prepared[False], [[0, 1, 2, 3], [4, 5, 6, 7]], False)
    counts = np.asarray(two.completion_mask).sum(axis=(1, 2, 3))
    assert counts[0] != counts[1], counts  # the case where a plain mean of micro-batch means is wrong
    tx = _capture_grads()
    s1, m1 = _step(module, tx, cfg, policy, one, None)
    s2, m2 = _step(module, tx, cfg, policy, two, None)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=FP32_REL)
    assert _rel(s2.opt_state, s1.opt_state) <= FP32_REL


def _loss_and_grads(module, params, batch, reference, cfg):
    micro = jax.tree_util.tree_map(lambda x: x[0], batch)
    ref = reference_logps(module, reference, micro, cfg)
    fn = jax.jit(jax.value_and_grad(lambda p: batch_loss(module, p, micro, ref, cfg)[0]))
    return fn(params)


def test_remat_equals_no_remat_within_fp32_rounding(setup):
    """remat recomputes each layer's forward in the backward pass: the same ops on the same values, but XLA:CPU
    schedules (and so rounds) the recomputed sums differently: measured 1 ulp on the loss and <= 3e-7 relative
    per gradient leaf, so not bit-exact; asserted within REMAT_REL."""
    prepared, policy, reference = setup
    cfg = StepConfig(LossConfig(), frozen_encoder=False)
    batch = _batch(prepared[True], [list(range(8))], True)
    base = _loss_and_grads(build_module(CONFIG, inference_scaling=False), policy, batch, reference, cfg)
    for policy_name in ("full", "dots"):
        module = build_module(CONFIG, remat_policy=policy_name, inference_scaling=False)
        loss, grads = _loss_and_grads(module, policy, batch, reference, cfg)
        assert float(loss) == pytest.approx(float(base[0]), rel=REMAT_REL), policy_name
        assert _rel(grads, base[1]) <= REMAT_REL, (policy_name, _rel(grads, base[1]))


# bf16 keeps 8 significant bits (2^-9 = 0.2 % relative rounding per op). Stated tolerances against fp32 compute
# over the same fp32 master weights: the loss within 0.1 %; the whole gradient (all leaves as one vector) within
# 2 % in norm; every leaf pointing the same way (cosine >= 0.99). Per leaf, small sums over many positions (the
# biases) cancel and lose more relative precision (measured up to 10 % on a bias, cosine >= 0.995), so a per-leaf
# norm bound would have to be loose; the direction is what an optimizer step uses.
BF16_LOSS_REL, BF16_GRAD_REL, BF16_MIN_COSINE = 1e-3, 2e-2, 0.99


def test_bf16_compute_is_within_tolerance_of_fp32(setup):
    prepared, policy, reference = setup
    cfg = StepConfig(LossConfig(), frozen_encoder=False)
    batch = _batch(prepared[True], [list(range(8))], True)
    loss32, grads32 = _loss_and_grads(build_module(CONFIG, inference_scaling=False), policy, batch, reference, cfg)
    module16 = build_module(CONFIG, dtype=jnp.bfloat16, inference_scaling=False)
    loss16, grads16 = _loss_and_grads(module16, policy, batch, reference, cfg)
    assert jax.tree_util.tree_leaves(grads16)[0].dtype == jnp.float32  # fp32 master weights and gradients
    assert float(loss16) == pytest.approx(float(loss32), rel=BF16_LOSS_REL)
    assert float(loss16) != float(loss32)  # bf16 really ran
    flat16, flat32 = (jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g)]) for g in (grads16, grads32))
    assert float(jnp.linalg.norm(flat16 - flat32) / jnp.linalg.norm(flat32)) <= BF16_GRAD_REL
    for a, b in zip(jax.tree_util.tree_leaves(grads16), jax.tree_util.tree_leaves(grads32)):
        cosine = float(jnp.vdot(a.ravel(), b.ravel()) / (jnp.linalg.norm(a.ravel()) * jnp.linalg.norm(b.ravel())))
        assert cosine >= BF16_MIN_COSINE, cosine
