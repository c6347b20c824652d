"""LoRA against PEFT (the reference implementation), in fp32 on tiny random models: the adapted module's logits
equal PEFT's on the same transformers model with the same adapter weights, its adapter gradients equal PyTorch
autograd's through PEFT, and the adapters we write are the tensors and target modules PEFT has, for Qwen2-Audio
(GQA and MHA, audio tower adapted too) and Qwen-Audio v1 (the oracle of tests/_v1_reference.py, whose fused
c_attn carries one adapter over q | k | v)."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests._oracles import require

torch = require("torch", "the parity oracle")
peft = require("peft", "the LoRA oracle")

from qwen_audio_jax.conversion import peft as peft_io  # noqa: E402
from qwen_audio_jax.conversion.hf_checkpoint import StateDictSource  # noqa: E402
from qwen_audio_jax.conversion.hf_config import from_hf_config  # noqa: E402
from qwen_audio_jax.conversion.hf_to_jax import params_from_hf  # noqa: E402
from qwen_audio_jax.conversion.safetensors_io import SafetensorsFile  # noqa: E402
from qwen_audio_jax.model import lora  # noqa: E402
from qwen_audio_jax.model.decoder import positions_from_mask  # noqa: E402
from qwen_audio_jax.model.params import abstract_params, build_module  # noqa: E402
from tests._hf_models import GQA, SPECS, build_hf_model, jax_twin, random_batch  # noqa: E402
from tests._lora import lora_tensors, scale_lora_b, summed_logprob, tree_from_peft  # noqa: E402
from tests._requests import synth_clip  # noqa: E402
from tests._v1_reference import (  # noqa: E402
    AUDIO_END_ID,
    AUDIO_PAD_ID,
    AUDIO_START_ID,
    V1Spec,
    _embed,
    _lm,
    audio_token_num,
    config_dict,
    encode_audio,
    features,
    init_random,
)

pytestmark = pytest.mark.parity

LOGITS_ATOL = 1e-4  # fp32, as the model parity tests
GRAD_RTOL = 1e-5  # per leaf: max |ours - autograd| <= GRAD_RTOL * max |autograd|
RANK, ALPHA = 4, 8  # scale 2: a scale folded in the wrong place fails
QWEN2_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QWEN2_AUDIO = ["out_proj", "fc1", "fc2"]  # with the names above, every linear layer of the audio tower's blocks
V1_TARGETS = ["c_attn", "c_proj", "w1", "w2"]
V1_AUDIO = ["query", "key", "value", "out", "mlp.0", "mlp.2"]  # the v1 audio blocks' linear layers


def _inject(torch_model, targets):
    """PEFT's LoRA on `targets` with random A and B (B scaled down so the delta is the size of the weights)."""
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights=False)
    peft.inject_adapter_in_model(config, torch_model)
    scale_lora_b(torch_model, 0.1)
    return torch_model


def _adapters(config, spec, torch_model):
    _, abstract = lora.split(abstract_params(config, lora=spec))
    return abstract, tree_from_peft(lora_tensors(torch_model), abstract, config)


def _ours(config, spec):
    """One jitted program: (summed log-prob, logits) and the adapters' gradient, everything passed as an argument
    (closed-over arrays would be constants XLA folds at compile time)."""
    module = build_module(config, lora=spec)

    def loss(adapters, base, inputs, weights):
        logits = module.apply({"params": lora.join(base, adapters)}, *inputs)
        return summed_logprob(logits, inputs[0], weights, jnp), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _assert_grads_equal(ours: dict, want: dict):
    ours, want = traverse_util.flatten_dict(ours), traverse_util.flatten_dict(want)
    assert ours.keys() == want.keys()
    for path, w in want.items():
        assert np.abs(w).max() > 0, "/".join(path)  # every adapter is reached by the loss
        err = np.abs(np.asarray(ours[path]) - w).max()
        assert err <= GRAD_RTOL * np.abs(w).max(), ("/".join(path), err, np.abs(w).max())


# ---- Qwen2-Audio ---------------------------------------------------------------------------------------------
def _qwen2_case(tiny, grads: bool) -> SimpleNamespace:
    """PEFT (torch autograd) and ours on the same batch: logits, and (grads) the summed log-prob's adapter
    gradients."""
    hf = build_hf_model(tiny, seed=1)
    config, base = jax_twin(hf)  # before the adapters go in
    tokens, mask, mel, lengths, frame_mask = random_batch(np.random.default_rng(0), [[0.9], [0.6], []], [5, 3, 8])
    torch_in = dict(
        input_ids=torch.from_numpy(tokens).long(),
        attention_mask=torch.from_numpy(mask).long(),
        position_ids=torch.from_numpy(np.array(positions_from_mask(jnp.asarray(mask)))).long(),  # as generate()
        input_features=torch.from_numpy(mel),
        feature_attention_mask=torch.from_numpy(frame_mask).long(),
    )
    with torch.no_grad():
        plain = hf(**torch_in).logits.numpy()
    _inject(hf, QWEN2_TARGETS + QWEN2_AUDIO)
    spec = lora.spec_from_targets(QWEN2_TARGETS, is_v1=False, rank=RANK, alpha=ALPHA, audio=True)
    abstract, adapters = _adapters(config, spec, hf)
    with torch.set_grad_enabled(grads):
        logits = hf(**torch_in).logits
    # Our audio tower takes the frames it needs (a multiple of 4 past the longest clip), not all 3000.
    inputs = (jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(mel[:, :, :100]), jnp.asarray(lengths))
    case = SimpleNamespace(tiny=tiny, hf=hf, config=config, spec=spec, adapters=adapters, real=mask.astype(bool))
    case.plain, case.want = plain, logits.detach().numpy()
    if not grads:  # the forward program alone (a gradient program takes twice as long to compile)
        module = build_module(config, lora=spec)
        case.got = np.asarray(jax.jit(module.apply)({"params": lora.join(base, adapters)}, *inputs))
        return case
    summed_logprob(logits, torch_in["input_ids"], torch_in["attention_mask"].float(), torch).backward()
    (_, got), case.grads = _ours(config, spec)(adapters, base, inputs, jnp.asarray(mask, jnp.float32))
    case.got, case.want_grads = np.asarray(got), tree_from_peft(lora_tensors(hf, grads=True), abstract, config)
    return case


@pytest.fixture(scope="module")
def qwen2_gqa():
    return _qwen2_case(GQA, grads=True)


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def qwen2(request):
    return request.getfixturevalue("qwen2_gqa") if request.param is GQA else _qwen2_case(request.param, grads=False)


def test_qwen2_logits_equal_peft(qwen2):
    want, got, real = qwen2.want, qwen2.got, qwen2.real
    np.testing.assert_allclose(got[real], want[real], atol=LOGITS_ATOL, rtol=0)
    # The adapters matter (so the comparison can fail): the base model alone is far from PEFT's logits.
    assert np.abs(qwen2.plain[real] - want[real]).max() > 100 * LOGITS_ATOL


def test_qwen2_adapter_gradients_equal_autograd(qwen2_gqa):
    _assert_grads_equal(qwen2_gqa.grads, qwen2_gqa.want_grads)


def test_qwen2_written_adapter_is_peft_state_dict(qwen2, tmp_path):
    """write_adapter's tensors are PEFT's own (names and values), and its target_modules regex makes PEFT adapt
    exactly the layers that have them."""
    hf, config = qwen2.hf, qwen2.config
    peft_io.write_adapter(tmp_path, qwen2.adapters, config, qwen2.spec, base_model="unused")
    file = SafetensorsFile(tmp_path / peft_io.WEIGHTS_FILE)
    written = {k: np.asarray(file.read(k)) for k in file.names()}
    want = {f"base_model.model.{k}".replace(".default", ""): v for k, v in lora_tensors(hf).items()}
    assert written.keys() == want.keys()
    for k, v in want.items():
        np.testing.assert_array_equal(written[k], v, err_msg=k)
    doc = peft_io.read_adapter_config(tmp_path)
    fresh = build_hf_model(qwen2.tiny)
    peft.inject_adapter_in_model(peft.LoraConfig(r=doc["r"], target_modules=doc["target_modules"]), fresh)
    assert {k.replace(".default", "") for k in lora_tensors(fresh)} == {
        k.removeprefix("base_model.model.") for k in written
    }


# ---- Qwen-Audio v1 -------------------------------------------------------------------------------------------
def _v1_logits(oracle, ids, mel, mel_len):
    """The oracle's prompt logits [T, V] with autograd on (encode_audio's undecorated body)."""
    clip = encode_audio.__wrapped__(oracle, mel, mel_len)
    return _lm(oracle, _embed(oracle, ids, [clip]), 1.0)[0]


@pytest.fixture(scope="module")
def v1():
    oracle = init_random(V1Spec(), seed=3)  # seq_length 2048: no NTK / logn at these lengths (off in training)
    config = from_hf_config(config_dict(oracle.spec))
    base = params_from_hf(StateDictSource(oracle.state_dict(), v1=True), config)
    mel, mel_len = features(synth_clip(0.9, 1))
    rng = np.random.default_rng(0)
    audio = [AUDIO_START_ID] + [AUDIO_PAD_ID] * audio_token_num(mel_len) + [AUDIO_END_ID]
    ids = [int(i) for i in rng.integers(0, 151643, 5)] + audio + [int(i) for i in rng.integers(0, 151643, 7)]
    with torch.no_grad():
        plain = _v1_logits(oracle, ids, mel, mel_len).numpy()
    _inject(oracle, V1_TARGETS + V1_AUDIO)
    spec = lora.spec_from_targets(V1_TARGETS, is_v1=True, rank=RANK, alpha=ALPHA, audio=True)
    abstract, adapters = _adapters(config, spec, oracle)
    logits = _v1_logits(oracle, ids, mel, mel_len)
    summed_logprob(logits[None], torch.tensor([ids]), torch.ones(1, len(ids)), torch).backward()
    tokens = jnp.asarray([ids], jnp.int32)
    inputs = (tokens, jnp.ones_like(tokens), jnp.asarray(mel.numpy()[None, :, :100]), jnp.asarray([mel_len]))
    ours = _ours(config, spec)
    (_, got), grads = ours(adapters, base, inputs, jnp.ones(tokens.shape, jnp.float32))
    return SimpleNamespace(
        config=config,
        spec=spec,
        ids=ids,
        clip=(mel, mel_len),
        plain=plain,
        want=(logits.detach().numpy(), tree_from_peft(lora_tensors(oracle, grads=True), abstract, config)),
        got=(np.asarray(got)[0], grads),
        adapters=adapters,
        run=lambda ad: np.asarray(ours(ad, base, inputs, jnp.ones(tokens.shape, jnp.float32))[0][1])[0],
    )


def test_v1_logits_equal_peft(v1):
    np.testing.assert_allclose(v1.got[0], v1.want[0], atol=LOGITS_ATOL, rtol=0)
    assert np.abs(v1.plain - v1.want[0]).max() > 100 * LOGITS_ATOL


def test_v1_adapter_gradients_equal_autograd(v1):
    _assert_grads_equal(v1.got[1], v1.want[1])


def test_v1_written_adapter_loads_into_peft(v1, tmp_path):
    """Our v1 adapters written as PEFT's (c_attn one module, c_proj both projections), loaded by PEFT into a fresh
    oracle (its LoraConfig from the written adapter_config.json): the oracle's logits equal ours."""
    rng = np.random.default_rng(5)
    flat = traverse_util.flatten_dict(v1.adapters)
    shuffled = {p: rng.permutation(np.asarray(x).ravel()).reshape(x.shape) for p, x in flat.items()}
    adapters = traverse_util.unflatten_dict(shuffled)  # other values than the fixture's PEFT weights
    peft_io.write_adapter(tmp_path, adapters, v1.config, v1.spec, base_model="unused")
    fresh = init_random(V1Spec(), seed=3)
    peft.inject_adapter_in_model(peft.LoraConfig.from_pretrained(str(tmp_path)), fresh)
    file = SafetensorsFile(tmp_path / peft_io.WEIGHTS_FILE)
    state = {k.removeprefix("base_model.model."): torch.from_numpy(np.array(file.read(k))) for k in file.names()}
    result = peft.set_peft_model_state_dict(fresh, state)
    assert not result.unexpected_keys
    assert len(lora_tensors(fresh)) == len(state)  # the regex adapted exactly the written modules
    with torch.no_grad():
        want = _v1_logits(fresh, v1.ids, *v1.clip).numpy()
    np.testing.assert_allclose(v1.run(adapters), want, atol=LOGITS_ATOL, rtol=0)
