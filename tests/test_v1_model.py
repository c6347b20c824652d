"""Qwen-Audio (v1) end to end against the independent PyTorch oracle of tests/_v1_reference.py (written from
docs/reference.md's v1 section and the original files, not from the JAX code), run one request at a time:
conversion both ways, the 7B shapes, encoder outputs, logits with NTK and logn active, greedy generation through
recycled engine slots, the tag prompts' token ids, word timestamps, SFT, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from tests._oracles import require

torch = require("torch", "the v1 oracle")

from qwen_audio_jax import api  # noqa: E402
from qwen_audio_jax.cli.main import main  # noqa: E402
from qwen_audio_jax.config import qwen_audio_7b  # noqa: E402
from qwen_audio_jax.conversion.name_map import hf_shape, rules_for  # noqa: E402
from qwen_audio_jax.generation.engine import Engine, EngineRequest, ListSource  # noqa: E402
from qwen_audio_jax.generation.options import GenerationOptions  # noqa: E402
from qwen_audio_jax.jobs.tasks import expand_task  # noqa: E402
from qwen_audio_jax.jobs.timestamps import parse_word_timestamps  # noqa: E402
from qwen_audio_jax.model.params import abstract_params, build_module, count_params  # noqa: E402
from qwen_audio_jax.model.rope import ntk_index  # noqa: E402
from tests._requests import synth_clip  # noqa: E402
from tests._v1_checkpoint import checkpoint_state_dict, make_v1_checkpoint_dir, real_v1_spec  # noqa: E402
from tests._v1_reference import V1Model, V1Spec, encode_audio, features, greedy, init_random, prompt_logits  # noqa: E402

pytestmark = pytest.mark.parity
SPEC = V1Spec(seq_length=32)  # tiny: NTK alpha and logn scaling are active past 32 tokens (every audio prompt)
STOP = (151643, 151645, 151644)
MODULE_ATOL, LOGITS_ATOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    root = tmp_path_factory.mktemp("v1")
    oracle = init_random(SPEC, seed=3)
    hf = make_v1_checkpoint_dir(root / "hf", model=oracle, shards=3, chat=False)
    assert main(["convert", str(hf), str(root / "jax"), "--no-progress"]) == 0
    clips = {}
    for name, sec, seed in (("a", 1.37, 1), ("b", 0.62, 2), ("c", 2.41, 3)):
        clips[name] = root / f"{name}.wav"
        sf.write(clips[name], synth_clip(sec, seed), 16000)
    return oracle, hf, root / "jax", api.load(root / "jax"), clips


def _wav(path):
    return sf.read(path, dtype="float32")[0]


def test_7b_shapes_and_names_map_one_to_one():
    config = qwen_audio_7b()
    assert count_params(abstract_params(config)) == 8_396_222_464
    with torch.device("meta"):
        reference = {k: tuple(v.shape) for k, v in V1Model(real_v1_spec()).state_dict().items()}
    ours = {}
    flat = {"/".join(k): v for k, v in _flatten(abstract_params(config))}
    for rule in rules_for(config):
        shape = flat[rule.target].shape
        for name in rule.source_names():
            want = hf_shape(rule, shape[1:] if rule.num_layers else shape)
            assert ours.setdefault(name, want) == want  # q/k/v parts of one c_attn agree on its full shape
    assert ours == reference and len(ours) == 749


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def test_round_trip_is_bit_exact_in_v1_format(v1, tmp_path):
    _, hf, jax_dir, _, _ = v1
    assert main(["export-hf", str(jax_dir), str(tmp_path / "back"), "--max-shard-size", "40MB", "--no-progress"]) == 0
    back = tmp_path / "back"
    assert json.loads((back / "config.json").read_text()) == json.loads((hf / "config.json").read_text())
    for name in ("qwen.tiktoken", "generation_config.json", "tokenizer_config.json", "mel_filters.npz"):
        assert (back / name).read_bytes() == (hf / name).read_bytes(), name
    original, exported = checkpoint_state_dict(hf), checkpoint_state_dict(back)
    assert original.keys() == exported.keys()
    for k, v in original.items():
        assert v.dtype == exported[k].dtype and torch.equal(v, exported[k]), k


def test_encoder_matches_the_oracle_per_clip(v1):
    """Clips of different lengths encoded together give what each gives alone (the reference's batched path
    does not: its last frames see the neighbours' padding)."""
    oracle, _, _, model, clips = v1
    module = build_module(model.config)
    mels, lengths = [], []
    for path in clips.values():
        mel, n = features(_wav(path))
        mels.append(mel.numpy()[:, :1000])
        lengths.append(n)
    feats, n_tokens = module.apply(
        {"params": model.params}, jnp.asarray(np.stack(mels)), jnp.asarray(lengths), method="encode_audio"
    )
    for c, path in enumerate(clips.values()):
        want = encode_audio(oracle, *features(_wav(path))).numpy()  # [bos, frames..., eos]
        n = int(n_tokens[c])
        assert n == want.shape[0] - 2
        np.testing.assert_allclose(np.asarray(feats)[c, :n], want[1:-1], atol=MODULE_ATOL, rtol=0)


def _request(clips, *names, text="<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"):
    return {"prompt": "".join(f"<audio>{clips[n]}</audio>" for n in names) + text}


def test_logits_match_the_oracle_with_ntk_and_logn(v1):
    oracle, _, _, model, clips = v1
    module = build_module(model.config)
    cases = (
        (_request(clips, "a", "b", "c"), ["a", "b", "c"]),
        (_request(clips, "a"), ["a"]),
        ({"prompt": "Hello there, how are you?"}, []),
    )
    for req, names in cases:
        p = model.processor.prepare(req)
        ids = np.asarray([p.token_ids], np.int32)
        mel = np.stack(p.mels)[:, :, :1000] if p.mels else None
        hidden, _ = module.apply(
            {"params": model.params},
            jnp.asarray(ids),
            jnp.ones_like(jnp.asarray(ids)),
            None if mel is None else jnp.asarray(mel),
            None if mel is None else jnp.asarray(p.mel_lengths),
            jnp.asarray([ntk_index(len(p.token_ids), model.config.decoder)]),
            method="forward",
        )
        got = np.asarray(module.apply({"params": model.params}, hidden, method="logits"))[0]
        want = prompt_logits(oracle, p.token_ids, [_wav(clips[n]) for n in names]).numpy()
        np.testing.assert_allclose(got, want, atol=LOGITS_ATOL, rtol=0)
    # The cases cover alpha 7 (over 4 x 32 tokens), 3 and 1 (a short text prompt: no scaling at all).
    lengths = [len(model.processor.prepare(r).token_ids) for r, _ in cases]
    assert [ntk_index(n, model.config.decoder) for n in lengths] == [2, 1, 0], lengths


def test_greedy_matches_the_oracle_through_recycled_slots(v1):
    """Four requests of different lengths and budgets on two slots: each equals the oracle run alone."""
    oracle, _, _, model, clips = v1
    cases = [
        (_request(clips, "c"), ["c"], 20),
        (_request(clips, "b", text="<|startofanalysis|><|en|><|question|>What is it?<|answer|>"), ["b"], 7),
        ({"prompt": "Tell me a story."}, [], 13),
        (_request(clips, "a", "b"), ["a", "b"], 16),
    ]
    engine = Engine(model.config, model.params, batch_size=2)
    opts = GenerationOptions(max_new_tokens=20)
    reqs = [
        EngineRequest(i, model.processor.prepare(r), opts.for_request({"max_new_tokens": n}, str(i)))
        for i, (r, _, n) in enumerate(cases)
    ]
    got = dict(engine.run(ListSource(reqs)))
    for i, (_, names, n) in enumerate(cases):
        want = greedy(oracle, reqs[i].prepared.token_ids, [_wav(clips[x]) for x in names], n, STOP)
        assert got[i].token_ids == want, i


# Tag ids (docs/reference.md §3.5).
TAGS = {
    "<|startoftranscript|>": 151852,
    "<|startofanalysis|>": 151853,
    "<|translate|>": 151854,
    "<|transcribe|>": 151855,
    "<|caption|>": 151856,
    "<|keyword|>": 151857,
    "<|unknown|>": 151858,
    "<|en|>": 151859,
    "<|zh|>": 151860,
    "<|de|>": 151861,
    "<|notimestamps|>": 151868,
    "<|timestamps|>": 151870,
    "<|0.00|>": 151871,
    "<|caption_clotho|>": 154873,
    "<|itn|>": 154876,
    "<|wo_itn|>": 154877,
    "<|emotion_recognition|>": 154887,
    "<|note_analysis|>": 154889,
    "<|question|>": 155152,
    "<|answer|>": 155153,
    "<|scene|>": 155155,
    "<|vocal_classification|>": 155157,
}


@pytest.mark.parametrize(
    "task,extra,tags",
    [
        ("asr", {"lang": "en"}, "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"),
        (
            "s2tt",
            {"lang": "en", "target": "de"},
            "<|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|itn|>",
        ),
        ("caption", {}, "<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_clotho|>"),
        ("ser", {}, "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|emotion_recognition|>"),
        ("vsc", {}, "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|vocal_classification|>"),
        ("asc", {}, "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>"),
        ("note", {}, "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|note_analysis|>"),
        ("srwt", {"lang": "zh"}, "<|startoftranscript|><|zh|><|transcribe|><|zh|><|timestamps|><|0.00|>"),
    ],
)
def test_task_prompts_are_the_tag_ids(v1, task, extra, tags):
    _, _, _, model, clips = v1
    p = model.processor.prepare(expand_task({"task": task, "audio": str(clips["a"]), **extra}, chat=False, v1=True))
    end = p.token_ids.index(155164)  # </audio>
    want = [TAGS[t] for t in tags.replace("|><|", "|>\0<|").split("\0")]
    assert p.token_ids[0] == 155163 and set(p.token_ids[1:end]) == {151851} and p.token_ids[end + 1 :] == want


def test_aqa_prompt_carries_the_question(v1):
    _, _, _, model, clips = v1
    p = model.processor.prepare(
        expand_task({"task": "aqa", "audio": str(clips["a"]), "question": "Is it loud?"}, chat=False, v1=True)
    )
    tail = p.token_ids[p.token_ids.index(155164) + 1 :]
    assert tail[:3] == [151853, 151859, 155152] and tail[-1] == 155153
    assert model.tokenizer.decode(tail[3:-1]) == "Is it loud?"


def test_word_timestamps(v1):
    tok = v1[3].tokenizer
    t = lambda s: tok.token_to_id(f"<|{s}|>")  # noqa: E731
    ids = [t("0.00"), *tok.encode("mister"), t("0.42"), t("0.42"), *tok.encode(" quilter"), t("0.95"), 151643]
    assert parse_word_timestamps(ids, tok) == [
        {"word": "mister", "start": 0.0, "end": 0.42},
        {"word": "quilter", "start": 0.42, "end": 0.95},
    ]
    assert parse_word_timestamps(tok.encode("no times here"), tok) is None


def test_cli_generate_every_preset_and_score(v1, tmp_path):
    _, _, jax_dir, _, clips = v1
    a = str(clips["a"])
    requests = [
        {"id": t, "task": t, "audio": a, **extra}
        for t, extra in (
            ("asr", {}),
            ("s2tt", {"target": "zh"}),
            ("caption", {"style": "audiocaps"}),
            ("aqa", {"question": "Why?"}),
            ("ser", {}),
            ("vsc", {}),
            ("asc", {}),
            ("note", {}),
            ("srwt", {}),
        )
    ]
    requests.append({"id": "bad-lang", "task": "asr", "audio": a, "lang": "xx"})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    assert (
        main(
            [
                "generate",
                "--model",
                str(jax_dir),
                "--input",
                str(tmp_path / "in.jsonl"),
                "--output",
                str(tmp_path / "out.jsonl"),
                "--max-new-tokens",
                "6",
                "--no-progress",
            ]
        )
        == 0
    )
    out = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert all(out[r["id"]]["error"] is None for r in requests[:-1]) and "unknown lang" in out["bad-lang"]["error"]
    scores = [{"id": "s", "prompt": f"<audio>{a}</audio>What is it?", "completion": "A tone."}]
    (tmp_path / "s.jsonl").write_text(json.dumps(scores[0]) + "\n")
    assert (
        main(
            [
                "score",
                "--model",
                str(jax_dir),
                "--input",
                str(tmp_path / "s.jsonl"),
                "--output",
                str(tmp_path / "scores.jsonl"),
                "--no-progress",
            ]
        )
        == 0
    )
    (line,) = map(json.loads, (tmp_path / "scores.jsonl").read_text().splitlines())
    assert line["error"] is None and line["num_tokens"] > 0 and np.isfinite(line["logprob"])


def test_bad_v1_checkpoints_are_one_line_errors(v1, tmp_path, capsys):
    _, hf, _, _, _ = v1
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in hf.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "rotary_pct": 0.5}))
    assert main(["convert", str(broken), str(tmp_path / "o1"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "rotary_pct" in err and err.count("\n") == 1
    (broken / "config.json").write_text(
        json.dumps({**cfg, "hidden_size": 96, "audio": {**cfg["audio"], "output_dim": 96}})
    )
    assert main(["convert", str(broken), str(tmp_path / "o2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has shape" in err and err.count("\n") == 1 and not (tmp_path / "o2").exists()


def test_plan_v1_7b(capsys):
    assert main(["plan", "--model", "qwen_audio_7b", "--batch", "4", "--max-len", "2048", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 8_396_222_464


def test_sft_on_a_v1_model_learns(v1, tmp_path):
    """The Qwen2-Audio SFT test's task on the v1 tiny model: exact answers on held-out sounds."""
    from tests._paths import REPO
    from tests._synthetic_prefs import SOUNDS, write_preference_set

    _, _, jax_dir, _, _ = v1
    train = write_preference_set(tmp_path / "train", 64, seed=2, preference=False)
    heldout = write_preference_set(tmp_path / "heldout", 16, seed=3, preference=False)
    assert (
        main(
            [
                "sft",
                "--config",
                str(REPO / "configs" / "sft_tiny.yaml"),
                "--no-progress",
                f"model={jax_dir}",
                f"data.train={train}",
                f"output_dir={tmp_path / 'run'}",
                "optim.freeze_audio_encoder=false",
            ]
        )
        == 0
    )
    model = api.load(tmp_path / "run" / "model")
    records = [json.loads(x) for x in heldout.read_text().splitlines()]
    requests = [
        {
            "id": r["id"],
            "messages": json.loads(json.dumps(r["messages"][:-1]).replace('"s3_', f'"{heldout.parent}/s3_')),
        }
        for r in records
    ]
    results = api.generate(model, requests, GenerationOptions(max_new_tokens=8))
    answers = [r["messages"][-1]["content"] for r in records]
    exact = np.mean([res["text"] == want for res, want in zip(results, answers)])
    assert exact >= 0.95, [(r["text"], a) for r, a in zip(results, answers)]
    assert set(answers) == set(SOUNDS)
    # The trained v1 model goes back to Qwen-Audio's own format: the oracle loads it strictly.
    from tests._v1_checkpoint import load_v1_checkpoint_dir

    assert main(["export-hf", str(tmp_path / "run" / "model"), str(tmp_path / "hf"), "--no-progress"]) == 0
    assert isinstance(load_v1_checkpoint_dir(tmp_path / "hf"), V1Model)
    assert Path(tmp_path / "hf" / "qwen.tiktoken").is_file()


def test_lora_dpo_on_a_v1_model(v1, tmp_path):
    """LoRA-DPO on the v1 tiny model: adapters on v1's own layers (the fused c_attn as one, both c_proj, w1, w2)
    train, the loss falls, and the run's adapter exports under PEFT's v1 names, those only (PEFT
    parity of those tensors: tests/test_lora_peft.py)."""
    from flax import traverse_util

    from tests._paths import REPO
    from tests._synthetic_prefs import write_preference_set

    _, _, jax_dir, _, _ = v1
    prefs = write_preference_set(tmp_path / "train", 32, seed=4)
    out = tmp_path / "run"
    args = ["dpo", "--config", str(REPO / "configs" / "dpo_tiny.yaml"), "--no-progress", f"model={jax_dir}"]
    args += [f"data.train={prefs}", f"output_dir={out}", "lora.rank=4", "lora.base_dtype=float32", "train.steps=12"]
    assert main([*args, "optim.learning_rate=1e-2", "optim.min_learning_rate=1e-3", "checkpoint.every=12"]) == 0
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.05 and metrics[-1]["rewards/margins"] > 0
    from safetensors.numpy import load_file

    assert main(["export-hf", str(out / "model"), str(tmp_path / "peft"), "--adapter-only", "--no-progress"]) == 0
    names = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    modules = {k.split(".lora_")[0].split(".h.0.")[-1] for k in names if ".h.0." in k}
    assert modules == {"attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj"}, sorted(names)
    leaves = traverse_util.flatten_dict(api.load(out / "model").params)
    assert not any(k[-1].startswith("lora_") for k in leaves)  # as --model: merged into the base at load
