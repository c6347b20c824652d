"""PEFT adapters through the command line, against transformers + PEFT: adapters made with `peft.get_peft_model`
(LLaMA-Factory's settings; one that adapts the audio tower; one with rsLoRA, rank_pattern and alpha_pattern)
load through `generate --adapter` and give PEFT's greedy tokens; a LoRA run's output model (an adapter dir naming
its base) exports with `export-hf --adapter-only` to a dir PEFT loads with our adapted module's logits, and without
the flag to a merged checkpoint with PEFT's logits; what cannot be merged (DoRA, modules_to_save, biases) and every
misuse of the flags is one line naming the dir and the fix."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import traverse_util

from qwen_audio_jax.checkpoint.model_dir import load_params, read_model_dir_config
from qwen_audio_jax.checkpoint.safe_write import mark
from qwen_audio_jax.cli.main import main
from qwen_audio_jax.conversion import peft as peft_io
from qwen_audio_jax.model import lora
from qwen_audio_jax.model.params import abstract_params, build_module
from qwen_audio_jax.text.processor import Processor
from tests._hf_models import GQA, MHA, build_hf_model, random_batch
from tests._lora import scale_lora_b
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._oracles import require
from tests._requests import synth_clip

torch = require("torch", "the parity oracle")
peft = require("peft", "the LoRA oracle")

pytestmark = pytest.mark.parity

NEW = 10
LOGITS_ATOL = 1e-4
LM = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# LLaMA-Factory's `lora_target: all` on Qwen2-Audio: every linear layer of the LM, the audio tower and projector
# left out (its patch_target_modules regex).
LLAMA_FACTORY = "^(?!.*(?:audio_tower|multi_modal_projector)).*(?:" + "|".join(LM) + ").*"
ADAPTERS = {
    "llama-factory": dict(r=8, lora_alpha=16, target_modules=LLAMA_FACTORY),
    "audio-tower": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1", "out_proj", "down_proj"]),
    "rslora-patterns": dict(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"],
        rank_pattern={"down_proj": 4, "language_model.model.layers.1.self_attn.q_proj": 2},
        alpha_pattern={"o_proj": 4},
    ),
}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path):
    return [json.loads(x) for x in open(path)]


def _hf(tiny_hf_dir):  # noqa: F811
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(tiny_hf_dir, torch_dtype=torch.float32).eval()


def _peft(model, tmp, name, **kw):
    """model + a PEFT adapter with random A and B (saved under tmp/name), as the CAUSAL_LM tools make them."""
    kw = {"task_type": "CAUSAL_LM", "lora_dropout": 0.0, "init_lora_weights": False, **kw}
    model = peft.get_peft_model(model, peft.LoraConfig(**kw))
    scale_lora_b(model, 0.1)
    model.eval()
    model.save_pretrained(tmp / name)
    return model, tmp / name


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "clip.wav"
    sf.write(path, synth_clip(1.3, seed=4), 16000)
    chat = [{"role": "user", "content": [{"type": "audio", "audio": str(path)}, {"type": "text", "text": "What?"}]}]
    return [{"id": "chat", "messages": chat}, {"id": "text", "prompt": "Once upon a time"}]


def _generate(model_dir, requests, out, *flags) -> int:
    inp = _write(out.with_suffix(".in.jsonl"), requests)
    argv = ["generate", "--model", str(model_dir), "--input", inp, "--output", str(out), "--no-progress"]
    return main(argv + ["--max-new-tokens", str(NEW), *flags])


def _greedy(hf, processor, request, stop):
    """transformers' greedy continuation of one request (batch of one), cut after the first stop id."""
    p = processor.prepare({k: v for k, v in request.items() if k != "id"})
    kw = {}
    if p.mels:
        kw["input_features"] = torch.from_numpy(np.stack(p.mels))
        kw["feature_attention_mask"] = (torch.arange(3000)[None] < torch.tensor(p.mel_lengths)[:, None]).long()
    ids = torch.tensor([p.token_ids])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw, max_new_tokens=NEW,
                          do_sample=False, eos_token_id=list(stop), pad_token_id=stop[0])  # fmt: skip
    new = out[0, ids.shape[1] :].tolist()
    return new[: next((i + 1 for i, t in enumerate(new) if t in stop), len(new))]


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_peft_adapter_through_generate_gives_peft_greedy_tokens(name, tiny_model_dir, tiny_hf_dir, requests, tmp_path):  # noqa: F811
    hf, adapter = _peft(_hf(tiny_hf_dir), tmp_path, name, **ADAPTERS[name])
    out = tmp_path / "out.jsonl"
    assert _generate(tiny_model_dir, requests, out, "--adapter", str(adapter)) == 0
    stop = read_model_dir_config(tiny_model_dir)[0].stop_ids
    processor = Processor.from_model_dir(tiny_model_dir)
    results = {r["id"]: r for r in _read(out)}
    for request in requests:
        assert results[request["id"]]["error"] is None
        assert results[request["id"]]["token_ids"] == _greedy(hf, processor, request, stop), request["id"]
    with hf.disable_adapter():  # the adapter changes the answers (so the comparison can fail)
        plain = [_greedy(hf, processor, r, stop) for r in requests]
    assert plain != [results[r["id"]]["token_ids"] for r in requests]


# ---- a LoRA run's output model: export-hf ----------------------------------------------------------------------
def _hf_logits(model, batch):
    tokens, mask, mel, _, frame_mask = batch
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            input_features=torch.from_numpy(mel),
            feature_attention_mask=torch.from_numpy(frame_mask).long(),
        ).logits.numpy()


def _run_adapter(tmp_path, model_dir):
    """What a LoRA training run writes as OUTPUT/model: our (random, non-zero) adapters as a PEFT dir naming the
    base model dir, with the tool's marker."""
    config, _ = read_model_dir_config(model_dir)
    spec = lora.spec_from_targets(LM, is_v1=False, rank=8, alpha=16, audio=True)
    _, abstract = lora.split(abstract_params(config, lora=spec))
    rng = np.random.default_rng(7)
    flat = {
        p: rng.uniform(-0.1, 0.1, x.shape).astype(np.float32) if p[-1] == "lora_a" else
        rng.normal(0, 0.02, x.shape).astype(np.float32)
        for p, x in traverse_util.flatten_dict(abstract).items()
    }  # fmt: skip
    adapters = traverse_util.unflatten_dict(flat)
    run = tmp_path / "run" / "model"
    run.mkdir(parents=True)
    peft_io.write_adapter(run, adapters, config, spec, base_model=str(model_dir))
    mark(run, "model")
    return run, config, spec, adapters


def test_run_adapter_exports_for_peft_and_merged(tiny_model_dir, tiny_hf_dir, tmp_path, capsys):  # noqa: F811
    from transformers import Qwen2AudioForConditionalGeneration

    run, config, spec, adapters = _run_adapter(tmp_path, tiny_model_dir)
    batch = random_batch(np.random.default_rng(1), [[1.1], []], [6, 9])
    real = batch[1].astype(bool)
    # --adapter-only: a PEFT dir that PeftModel.from_pretrained puts on the base's transformers model.
    assert main(["export-hf", str(run), str(tmp_path / "peft"), "--adapter-only"]) == 0
    doc = json.loads((tmp_path / "peft" / peft_io.CONFIG_FILE).read_text())
    assert doc["base_model_name_or_path"] == str(tiny_model_dir)  # its hf_config.json has no _name_or_path
    with_peft = peft.PeftModel.from_pretrained(_hf(tiny_hf_dir), tmp_path / "peft").eval()
    want = _hf_logits(with_peft, batch)
    base = load_params(tiny_model_dir)
    tokens, mask, mel, lengths, _ = (jnp.asarray(x) for x in batch)
    module = build_module(config, lora=spec)
    ours = jax.jit(module.apply)({"params": lora.join(base, adapters)}, tokens, mask, mel[:, :, :112], lengths)
    np.testing.assert_allclose(np.asarray(ours)[real], want[real], atol=LOGITS_ATOL, rtol=0)
    with with_peft.disable_adapter():
        assert np.abs(_hf_logits(with_peft, batch)[real] - want[real]).max() > 100 * LOGITS_ATOL
    # Without the flag: the base with the adapter merged, a checkpoint transformers loads alone.
    assert main(["export-hf", str(run), str(tmp_path / "merged"), "--no-progress"]) == 0
    merged = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32)
    np.testing.assert_allclose(_hf_logits(merged.eval(), batch)[real], want[real], atol=LOGITS_ATOL, rtol=0)
    # --adapter-only of a model dir is refused in one line.
    capsys.readouterr()
    assert main(["export-hf", str(tiny_model_dir), str(tmp_path / "x"), "--adapter-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tiny_model_dir) in err and "not a LoRA adapter dir" in err
    assert not (tmp_path / "x").exists()


def test_peft_adapter_exports_merged_with_peft_logits(tiny_model_dir, tiny_hf_dir, tmp_path):  # noqa: F811
    """The rsLoRA + rank/alpha pattern adapter made by PEFT, named as a run's output (its base: our model dir),
    exported merged: transformers' logits on the export equal PEFT's on the base."""
    from transformers import Qwen2AudioForConditionalGeneration

    with_peft, adapter = _peft(_hf(tiny_hf_dir), tmp_path, "patterns", **ADAPTERS["rslora-patterns"])
    doc = json.loads((adapter / peft_io.CONFIG_FILE).read_text())
    assert doc["base_model_name_or_path"] == str(tiny_hf_dir)  # PEFT names the transformers dir it was made on
    doc["base_model_name_or_path"] = str(tiny_model_dir)
    (adapter / peft_io.CONFIG_FILE).write_text(json.dumps(doc))
    assert main(["export-hf", str(adapter), str(tmp_path / "merged"), "--no-progress"]) == 0
    batch = random_batch(np.random.default_rng(2), [[0.7], []], [4, 11])
    real = batch[1].astype(bool)
    merged = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32)
    want = _hf_logits(with_peft, batch)
    np.testing.assert_allclose(_hf_logits(merged.eval(), batch)[real], want[real], atol=LOGITS_ATOL, rtol=0)


# ---- refusals and misuse: one line each ------------------------------------------------------------------------
REFUSED = {
    "dora": (dict(use_dora=True), "DoRA"),
    "modules-to-save": (dict(modules_to_save=["multi_modal_projector"]), "modules_to_save"),
    "bias": (dict(bias="lora_only"), "bias"),
}


def _one_line_error(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_adapters_that_cannot_be_merged_are_refused(tiny_model_dir, requests, tmp_path, capsys):  # noqa: F811
    for name, (kw, why) in REFUSED.items():
        _, adapter = _peft(build_hf_model(GQA), tmp_path, name, r=4, lora_alpha=8, target_modules=LM, **kw)
        out = tmp_path / f"{name}.jsonl"
        argv = ["generate", "--model", str(tiny_model_dir), "--input", _write(tmp_path / "in.jsonl", requests)]
        _one_line_error(capsys, argv + ["--output", str(out), "--adapter", str(adapter)], str(adapter), why)
        assert not out.exists()


def test_adapter_flag_misuse_is_one_line(tiny_model_dir, tiny_hf_dir, requests, tmp_path, capsys):  # noqa: F811
    inp = _write(tmp_path / "in.jsonl", requests)
    manifest = _write(tmp_path / "manifest.jsonl", [{"id": "a", "audio": "x.wav", "reference": "hi"}])
    _, other = _peft(build_hf_model(MHA), tmp_path, "mha", r=4, lora_alpha=8, target_modules=LM)
    _, made = _peft(build_hf_model(GQA), tmp_path, "gqa", r=4, lora_alpha=8, target_modules=LM)
    missing = tmp_path / "nowhere"
    io = ["--input", inp, "--output", str(tmp_path / "o.jsonl")]
    for command in ("generate", "score"):
        _one_line_error(capsys, [command, "--model", str(tiny_model_dir), *io, "--adapter", str(missing)],
                        str(missing), "no such directory")  # fmt: skip
    _one_line_error(capsys, ["generate", "--model", str(tiny_model_dir), *io, "--adapter", str(tiny_model_dir)],
                    str(tiny_model_dir), "no adapter_config.json")  # fmt: skip
    # An adapter made for another model (the MHA tiny: other widths) is refused before anything is merged.
    _one_line_error(capsys, ["generate", "--model", str(tiny_model_dir), *io, "--adapter", str(other)],
                    str(other), "another model")  # fmt: skip
    # A PEFT dir as --model: its base is a transformers dir, not ours: convert it, pass it as --model.
    _one_line_error(capsys, ["generate", "--model", str(made), *io], str(made), "--model", "--adapter")
    _one_line_error(capsys, ["generate", "--model", str(made), *io, "--adapter", str(made)], "itself a LoRA adapter")
    eval_io = ["--task", "asr", "--manifest", manifest, "--output", str(tmp_path / "ev")]
    _one_line_error(capsys, ["eval", *eval_io, "--model", str(tiny_model_dir), "--adapter", str(missing)],
                    "no such directory")  # fmt: skip
    _one_line_error(capsys, ["eval", *eval_io, "--predictions", inp, "--adapter", str(made)], "--predictions")
    serve = ["serve", "--model", str(tiny_model_dir), "--port", "0", "--adapter", str(missing), "--no-progress"]
    _one_line_error(capsys, serve, "no such directory")
    _one_line_error(capsys, ["export-hf", str(made), str(tmp_path / "x")], str(made), "base model")
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "x").exists()
