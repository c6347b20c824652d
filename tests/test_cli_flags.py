"""Command-line flags no other test touches, each through `main` with its observable effect: generate
`--logprobs` (against transformers), `--workers`, `--attention`, `--chat` / `--no-chat` (against the hand-written
request forms), `--distributed` without a coordinator, `eval --variant`, and the `plan` flags (against byte counts
worked out by hand for the tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax import api
from qwen_audio_jax.cli.main import main
from tests._model_dirs import tiny_hf_dir, tiny_model_dir  # noqa: F401
from tests._oracles import require
from tests._requests import synth_clip

AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("flags") / "clip.wav"
    sf.write(path, synth_clip(1.3, seed=4), 16000)
    return str(path)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path):
    return [json.loads(x) for x in open(path)]


def _generate(model_dir, inp, out, *flags):
    argv = ["generate", "--model", str(model_dir), "--input", inp, "--output", str(out), "--no-progress"]
    return main(argv + ["--max-new-tokens", "6", *flags])


def _requests(clip):
    return [
        {"id": "raw", "prompt": AUDIO + "Generate the caption in English:", "audio": [clip]},
        {
            "id": "chat",
            "messages": [
                {"role": "user", "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": "What is it?"}]}
            ],
        },
        {"id": "text", "prompt": "Once upon a time"},
    ]


@pytest.mark.parity
def test_generate_logprobs_equal_transformers(tiny_model_dir, tiny_hf_dir, clip, tmp_path):  # noqa: F811
    torch = require("torch", "the parity oracle")
    from transformers import Qwen2AudioForConditionalGeneration

    inp = _write(tmp_path / "in.jsonl", _requests(clip)[:1] + _requests(clip)[2:])
    assert _generate(tiny_model_dir, inp, tmp_path / "out.jsonl", "--logprobs") == 0
    model = api.load(tiny_model_dir)
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_hf_dir, torch_dtype=torch.float32).eval()
    requests = {r["id"]: r for r in _read(inp)}
    for result in _read(tmp_path / "out.jsonl"):
        assert result["error"] is None and len(result["logprobs"]) == len(result["token_ids"]) > 0
        p = model.processor.prepare({k: v for k, v in requests[result["id"]].items() if k != "id"})
        ids = torch.tensor([p.token_ids + result["token_ids"]])
        kw = {}
        if p.mels:
            kw["input_features"] = torch.from_numpy(np.stack(p.mels))
            kw["feature_attention_mask"] = (torch.arange(3000)[None] < torch.tensor(p.mel_lengths)[:, None]).long()
        with torch.no_grad():
            logp = torch.log_softmax(hf(input_ids=ids, **kw).logits[0].float(), -1)
        n = len(p.token_ids)
        want = [float(logp[n - 1 + i, t]) for i, t in enumerate(result["token_ids"])]
        np.testing.assert_allclose(result["logprobs"], want, atol=1e-4, rtol=0)
        assert result["token_ids"][0] == int(logp[n - 1].argmax())  # greedy


def test_workers_change_nothing_but_speed(tiny_model_dir, clip, tmp_path, capsys):  # noqa: F811
    inp = _write(tmp_path / "in.jsonl", _requests(clip))
    assert _generate(tiny_model_dir, inp, tmp_path / "w1.jsonl", "--workers", "1") == 0
    assert _generate(tiny_model_dir, inp, tmp_path / "w3.jsonl", "--workers", "3") == 0
    one, three = _read(tmp_path / "w1.jsonl"), _read(tmp_path / "w3.jsonl")
    assert sorted(r["id"] for r in one) == ["chat", "raw", "text"]
    assert {r["id"]: r for r in one} == {r["id"]: r for r in three}
    capsys.readouterr()
    assert _generate(tiny_model_dir, inp, tmp_path / "w0.jsonl", "--workers", "0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "--workers" in err and not (tmp_path / "w0.jsonl").exists()


def test_attention_implementations_give_the_same_tokens(tiny_model_dir, clip, tmp_path, capsys):  # noqa: F811
    inp = _write(tmp_path / "in.jsonl", _requests(clip))
    tokens = {}
    for impl in ("xla", "dot_product"):
        assert _generate(tiny_model_dir, inp, tmp_path / f"{impl}.jsonl", "--attention", impl) == 0
        tokens[impl] = {r["id"]: r["token_ids"] for r in _read(tmp_path / f"{impl}.jsonl")}
    assert tokens["xla"] == tokens["dot_product"] and all(tokens["xla"].values())
    capsys.readouterr()
    assert _generate(tiny_model_dir, inp, tmp_path / "bad.jsonl", "--attention", "flash9") == 2
    assert "--attention" in capsys.readouterr().err


def _preset_forms(clip):
    """The ser preset written out by hand: the chat turn, and the base model's raw prompt (Qwen2-Audio's evaluation
    form, docs/reference.md §9.1)."""
    text = "What emotion does the speaker express? Answer with one word."
    content = [{"type": "audio", "audio": clip}, {"type": "text", "text": text}]
    chat = {"messages": [{"role": "user", "content": content}]}
    raw = {"prompt": AUDIO + "Recognize the emotion with keywords in English:", "audio": [clip]}
    return {"--chat": chat, "--no-chat": raw}


def test_generate_chat_and_no_chat_choose_the_preset_form(tiny_model_dir, clip, tmp_path):  # noqa: F811
    from qwen_audio_jax.generation.options import GenerationOptions

    inp = _write(tmp_path / "in.jsonl", [{"id": "t", "task": "ser", "audio": clip}])
    model = api.load(tiny_model_dir)
    forms = _preset_forms(clip)
    want = {
        flag: api.generate(model, [{"id": flag, **form}], GenerationOptions(max_new_tokens=6))[0]["token_ids"]
        for flag, form in forms.items()
    }
    assert want["--chat"] != want["--no-chat"]
    for flag in forms:
        assert _generate(tiny_model_dir, inp, tmp_path / f"{flag}.jsonl", flag) == 0
        assert _read(tmp_path / f"{flag}.jsonl")[0]["token_ids"] == want[flag], flag


def test_score_chat_and_no_chat_choose_the_preset_form(tiny_model_dir, clip, tmp_path):  # noqa: F811
    completion = " neutral"
    inp = _write(tmp_path / "in.jsonl", [{"id": "t", "task": "ser", "audio": clip, "completion": completion}])
    forms = _preset_forms(clip)
    want = api.score(api.load(tiny_model_dir), [{"id": f, **r, "completion": completion} for f, r in forms.items()])
    want = {r["id"]: r["logprob"] for r in want}
    assert abs(want["--chat"] - want["--no-chat"]) > 1e-3
    for flag in forms:
        out = tmp_path / f"{flag}.jsonl"
        argv = ["score", "--model", str(tiny_model_dir), "--input", inp, "--output", str(out), "--no-progress", flag]
        assert main(argv) == 0
        assert _read(out)[0]["logprob"] == pytest.approx(want[flag], abs=1e-5), flag


def test_distributed_without_a_coordinator_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "prompt": "Hi"}])
    assert _generate(tiny_model_dir, inp, tmp_path / "out.jsonl", "--distributed") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "coordinator" in err


def test_eval_variant_chooses_whose_rules_score(tmp_path):
    """SER accuracy: Qwen2-Audio's script compares `pred.lstrip()`, Qwen-Audio's `pred.strip()` (docs/eval.md):
    a prediction with a trailing space is wrong under one and right under the other."""
    manifest = _write(
        tmp_path / "m.jsonl",
        [
            {"id": f"x{i}", "audio": "a.wav", "reference": ref, "source": "meld", "language": "en"}
            for i, ref in enumerate(["happy", "sad", "angry", "neutral"])
        ],
    )
    preds = ["happy ", " sad", "angry", "fear"]  # trailing space, leading space, exact, wrong
    predictions = _write(tmp_path / "p.jsonl", [{"id": f"x{i}", "text": t, "error": None} for i, t in enumerate(preds)])
    accuracy = {}
    for variant in ("qwen2_audio", "qwen_audio_v1"):
        out = tmp_path / variant
        argv = ["eval", "--task", "ser", "--manifest", manifest, "--predictions", predictions, "--output", str(out)]
        assert main(argv + ["--variant", variant, "--no-progress"]) == 0
        accuracy[variant] = json.loads((out / "metrics.json").read_text())["overall"]["accuracy"]
    assert accuracy == {"qwen2_audio": 2 / 4, "qwen_audio_v1": 3 / 4}


# tiny() worked out by hand: audio tower = conv1 3*128*64+64 + conv2 3*64*64+64 + positions 1500*64 + final norm
# 2*64 + 2 layers x (q 64*64+64, k 64*64, v 64*64+64, out 64*64+64, fc1 64*128+128, fc2 128*64+64, 2 norms 4*64)
# = 24640 + 12352 + 96000 + 128 + 2 * 33408 = 199936; projector 64*64+64 = 4160. The sinusoidal positions (96000)
# are never trained (transformers: `embed_positions.requires_grad_(False)`), even with the encoder unfrozen.
TINY_AUDIO, TINY_POSITIONS, TINY_PROJECTOR = 199_936, 96_000, 4_160


def _plan(capsys, *flags, status=0):
    assert main(["plan", "--model", "tiny", "--batch", "4", "--max-len", "256", "--json", *flags]) == status
    return json.loads(capsys.readouterr().out)


def test_plan_flags_change_the_bytes_they_name(capsys):
    base = _plan(capsys, "--train")
    total = base["total_params"]
    assert base["trainable_params"] == total - TINY_AUDIO  # the encoder is frozen by default
    assert base["optimizer"] == 8 * base["trainable_params"] and base["gradients"] == 4 * base["trainable_params"]
    unfrozen = _plan(capsys, "--train", "--no-freeze-audio-encoder")
    assert unfrozen["trainable_params"] == total - TINY_POSITIONS
    assert unfrozen["optimizer"] == 8 * (total - TINY_POSITIONS)
    no_projector = _plan(capsys, "--train", "--freeze-projector")
    assert no_projector["trainable_params"] == total - TINY_AUDIO - TINY_PROJECTOR
    assert _plan(capsys, "--train", "--reference", "model")["reference_weights"] == 4 * total  # a frozen fp32 copy
    assert _plan(capsys, "--train", "--reference", "precomputed")["reference_weights"] == 0
    assert _plan(capsys, "--train", "--param-dtype", "bfloat16")["weights"] == 2 * total
    assert base["weights"] == 4 * total  # training keeps fp32 master weights by default
    inference = _plan(capsys)
    assert inference["weights"] == 2 * total  # stored in the compute dtype (bf16) for inference
    assert _plan(capsys, "--param-dtype", "float32")["weights"] == 4 * total
    assert _plan(capsys, "--compute-dtype", "float32")["weights"] == 4 * total
    fp32_acts = _plan(capsys, "--train", "--compute-dtype", "float32")["activations"]
    assert fp32_acts > base["activations"]
    # --margin: the usable share of --device-memory decides `fits` (status 3: a valid plan that does not fit).
    assert 2**30 < base["total"] <= 0.9 * 2**31
    tight = _plan(capsys, "--train", "--device-memory", "2GiB", "--margin", "0.5", status=3)
    loose = _plan(capsys, "--train", "--device-memory", "2GiB", "--margin", "0.9")
    assert tight["usable"] == 2**30 and tight["fits"] is False
    assert loose["usable"] == int(0.9 * 2**31) and loose["fits"] is True
    assert main(["plan", "--model", "tiny", "--batch", "4", "--max-len", "256", "--margin", "1.5"]) == 2
