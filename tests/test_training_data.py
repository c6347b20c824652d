"""Training data: every preference / SFT form parses to the same PreferenceExample, bad lines are reported (not
raised), validation drops (never truncates) unusable examples, and chosen/rejected share one featurization."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax.errors import DataError, PromptError
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.training.data import (
    PreferenceExample,
    pair_fingerprint,
    read_examples,
    validate_examples,
)
from tests._requests import synth_clip
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer, qwen_v1_tok_dir, qwen_v1_tokenizer  # noqa: F401

Q = "What's that sound?"


@pytest.fixture()
def data_dir(tmp_path):
    """tmp/data/clips/{a,b,c}.wav (0.5-1 s of synthetic sound) next to where the data files go."""
    clips = tmp_path / "data" / "clips"
    clips.mkdir(parents=True)
    for i, name in enumerate("abc"):
        sf.write(clips / f"{name}.wav", synth_clip(0.5 + 0.25 * i, i + 1), 16000)
    return tmp_path / "data"


@pytest.fixture()
def processor(qwen2_tokenizer):  # noqa: F811
    return Processor(qwen2_tokenizer)


def write_jsonl(path, records) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return str(path)


def user_audio(path, text=Q):
    return {"role": "user", "content": [{"type": "audio", "audio": path}, {"type": "text", "text": text}]}


def asst(text):
    return {"role": "assistant", "content": text}


# -- parsing ----------------------------------------------------------------------------------------------------------


def test_every_form_parses_to_the_same_example(data_dir):
    ours = {"id": "x", "messages": [user_audio("clips/a.wav")], "chosen": "Glass breaking.", "rejected": "A dog."}
    trl = {
        "id": "x",
        "prompt": [user_audio("clips/a.wav")],
        "chosen": [asst("Glass breaking.")],
        "rejected": [asst([{"type": "text", "text": "A "}, {"type": "text", "text": "dog."}])],
    }
    trl_implicit = {
        "id": "x",
        "chosen": [user_audio("clips/a.wav"), asst("Glass breaking.")],
        "rejected": [user_audio("clips/a.wav"), asst("A dog.")],
    }
    factory = {
        "id": "x",
        "conversations": [{"from": "human", "value": f"<audio>{Q}"}],
        "chosen": {"from": "gpt", "value": "Glass breaking."},
        "rejected": {"from": "gpt", "value": "A dog."},
        "audios": ["clips/a.wav"],
    }
    expected = PreferenceExample(
        "x", {"messages": [user_audio(str(data_dir / "clips" / "a.wav"))]}, "Glass breaking.", "A dog."
    )
    for i, record in enumerate([ours, trl, trl_implicit, factory]):
        examples, errors = read_examples(write_jsonl(data_dir / f"form{i}.jsonl", [record]), preference=True)
        assert errors == [] and examples == [expected], i


def test_prompt_form_and_relative_paths(data_dir, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths follow the data file, not the working directory
    absolute = str(data_dir / "clips" / "b.wav")
    path = write_jsonl(
        data_dir / "prompt.jsonl",
        [
            {
                "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Caption:",
                "audio": ["clips/a.wav"],
                "chosen": "c",
                "rejected": "r",
            },
            {"messages": [user_audio(absolute)], "chosen": "c", "rejected": "r"},
            {"prompt": "No audio here.", "chosen": "c", "rejected": "r"},
        ],
    )
    (a, b, c), errors = read_examples(path, preference=True)
    assert errors == []
    assert a.id == "prompt-1" and c.id == "prompt-3"  # no "id": file stem + line number
    assert a.request == {
        "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Caption:",
        "audio": [str(data_dir / "clips" / "a.wav")],
    }
    assert b.request["messages"][0]["content"][0]["audio"] == absolute
    assert c.request == {"prompt": "No audio here."}


def test_llama_factory_audio_placement_roles_and_json_array(data_dir):
    record = {
        "conversations": [
            {"from": "human", "value": "Compare <audio> with <audio>, which is louder?"},
            {"from": "gpt", "value": "The second."},
            {"from": "user", "value": "<audio>\nAnd this one?"},
        ],
        "system": "You listen carefully.",
        "audios": ["clips/a.wav", "clips/b.wav", "clips/c.wav"],
        "chosen": {"from": "assistant", "value": "Quieter."},
        "rejected": {"from": "gpt", "value": "Louder."},
    }
    path = data_dir / "factory.json"  # LLaMA-Factory ships JSON arrays
    path.write_text(json.dumps([record]), encoding="utf-8")
    (ex,), errors = read_examples(path, preference=True)
    assert errors == [] and ex.id == "factory-1" and (ex.chosen, ex.rejected) == ("Quieter.", "Louder.")
    clip = lambda n: {"type": "audio", "audio": str(data_dir / "clips" / f"{n}.wav")}  # noqa: E731
    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    assert ex.request == {
        "messages": [
            {"role": "system", "content": "You listen carefully."},
            {
                "role": "user",
                "content": [text("Compare "), clip("a"), text(" with "), clip("b"), text(", which is louder?")],
            },
            {"role": "assistant", "content": "The second."},
            {"role": "user", "content": [clip("c"), text("\nAnd this one?")]},
        ]
    }


def test_sft_forms(data_dir):
    target = "It is glass breaking."
    prompt = [user_audio("clips/a.wav")]
    path = write_jsonl(
        data_dir / "sft.jsonl",
        [
            {"id": "messages", "messages": prompt + [asst(target)]},
            {
                "id": "factory",
                "conversations": [{"from": "human", "value": f"<audio>{Q}"}, {"from": "gpt", "value": target}],
                "audios": ["clips/a.wav"],
            },
            {"id": "preference", "messages": prompt, "chosen": target, "rejected": "A dog."},
            {"id": "trl", "prompt": prompt, "completion": [asst(target)]},
            {"id": "no-target", "messages": prompt},
            {"id": "bare", "messages": [asst(target)]},
        ],
    )
    examples, errors = read_examples(path, preference=False)
    expected_request = {"messages": [user_audio(str(data_dir / "clips" / "a.wav"))]}
    assert [e.id for e in examples] == ["messages", "factory", "preference", "trl"]
    for e in examples:
        assert (e.request, e.chosen, e.rejected) == (expected_request, target, None), e.id
    assert [i for i, _ in errors] == ["no-target", "bare"]
    assert all("must end with the assistant turn" in m for _, m in errors)


def test_bad_lines_are_reported_not_raised(data_dir):
    good = {"id": "good", "messages": [user_audio("clips/a.wav")], "chosen": "c", "rejected": "r"}
    path = write_jsonl(
        data_dir / "bad.jsonl",
        [
            good,
            "{not json",
            {"id": "unknown", "question": "hi", "answer": "ho"},
            {"id": "no-rejected", "prompt": "p", "chosen": "c"},
            {"id": "non-string", "prompt": "p", "chosen": 5, "rejected": "r"},
            {"id": "same", "prompt": "p", "chosen": "c", "rejected": "c"},
            {"id": "empty", "prompt": "p", "chosen": "  ", "rejected": "r"},
            {
                "id": "audio-completion",
                "prompt": [user_audio("clips/a.wav")],
                "rejected": [asst("r")],
                "chosen": [{"role": "assistant", "content": [{"type": "audio", "audio": "clips/b.wav"}]}],
            },
            {
                "id": "audio-with-messages",
                "messages": [user_audio("clips/a.wav")],
                "audio": ["clips/b.wav"],
                "chosen": "c",
                "rejected": "r",
            },
            {
                "id": "implicit-diverges",
                "chosen": [user_audio("clips/a.wav"), asst("c")],
                "rejected": [user_audio("clips/b.wav"), asst("r")],
            },
            {"id": "tool", "conversations": [{"from": "function_call", "value": "{}"}], "chosen": "c", "rejected": "r"},
            {
                "id": "count",
                "conversations": [{"from": "human", "value": "<audio><audio>?"}],
                "audios": ["clips/a.wav"],
                "chosen": {"from": "gpt", "value": "c"},
                "rejected": {"from": "gpt", "value": "r"},
            },
            {
                "id": "assistant-audio",
                "conversations": [{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "<audio>"}],
                "audios": ["clips/a.wav", "clips/b.wav"],
                "chosen": "c",
                "rejected": "r",
            },
            "[1, 2]",
            "",
            good,
        ],
    )
    examples, errors = read_examples(path, preference=True)
    assert [e.id for e in examples] == ["good"]
    reasons = dict(errors)
    assert list(reasons) == [
        "bad-2",
        "unknown",
        "no-rejected",
        "non-string",
        "same",
        "empty",
        "audio-completion",
        "audio-with-messages",
        "implicit-diverges",
        "tool",
        "count",
        "assistant-audio",
        "bad-14",
        "good",
    ]
    for rid, words in {
        "bad-2": "line 2: not valid JSON",
        "unknown": "unknown record form",
        "no-rejected": "missing 'rejected'",
        "non-string": "'chosen' must be a string",
        "same": "identical",
        "empty": "'chosen' is empty",
        "audio-completion": "contains audio",
        "audio-with-messages": "goes with 'prompt' only",
        "implicit-diverges": "share every turn",
        "tool": "tool turn",
        "count": "2 <audio> placeholders but 'audios' lists 1",
        "assistant-audio": "audio goes in human turns",
        "bad-14": "not an object",
        "good": "duplicate id 'good' (first used on line 1)",
    }.items():
        assert words in reasons[rid], (rid, reasons[rid])
        assert reasons[rid].startswith("bad.jsonl line "), reasons[rid]


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_examples(tmp_path / "nope.jsonl", preference=True)


# -- prepare_completions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["qwen2_audio", "qwen_audio_v1"])
def test_prepare_completions_shares_clips_and_matches_prepare(variant, data_dir, request, monkeypatch):
    tok = request.getfixturevalue("qwen2_tokenizer" if variant == "qwen2_audio" else "qwen_v1_tokenizer")
    proc = Processor(tok)
    req = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": str(data_dir / "clips" / "a.wav")},
                    {"type": "text", "text": "Compare"},
                    {"type": "audio", "audio": str(data_dir / "clips" / "b.wav")},
                ],
            }
        ]
    }
    completions = ["Both are tones.", " The first is shorter, 12345 times."]
    calls = []
    featurize = proc._clips
    monkeypatch.setattr(proc, "_clips", lambda src, what, *budget: calls.append(src) or featurize(src, what, *budget))
    chosen, rejected = proc.prepare_completions(req, completions)
    assert len(calls) == 2  # two clips, featurized once for both completions
    assert chosen.mels is rejected.mels and all(a is b for a, b in zip(chosen.mels, rejected.mels))
    assert chosen.mel_lengths is rejected.mel_lengths and len(chosen.mels) == 2
    for got, c in zip((chosen, rejected), completions):
        want = proc.prepare({**req, "completion": c})
        assert got.token_ids == want.token_ids and got.completion_mask == want.completion_mask
        assert got.mel_lengths == want.mel_lengths
        assert all(np.array_equal(a, b) for a, b in zip(got.mels, want.mels))
        comp = tok.encode(c)
        n = got.num_prompt_tokens
        assert got.completion_mask == [0] * n + [1] * len(comp) and got.token_ids[n:] == comp
    with pytest.raises(PromptError, match="remove 'completion'"):
        proc.prepare_completions({**req, "completion": "x"}, completions)


def test_prepare_completions_prompt_form(processor, data_dir):
    req = {"prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Caption:", "audio": [str(data_dir / "clips" / "c.wav")]}
    outs = processor.prepare_completions(req, ["a", "b", "c d"])
    assert len({id(o.mels) for o in outs}) == 1
    assert [o.token_ids for o in outs] == [
        processor.prepare({**req, "completion": c}).token_ids for c in ["a", "b", "c d"]
    ]


# -- validation -------------------------------------------------------------------------------------------------------


def test_validation_counts_and_drops(processor, data_dir):
    (data_dir / "clips" / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    long_answer = " ".join(["glass"] * 400)
    path = write_jsonl(
        data_dir / "v.jsonl",
        [
            {"id": "ok", "messages": [user_audio("clips/a.wav")], "chosen": "Glass.", "rejected": "A dog."},
            {"id": "sft-like", "prompt": "Text only.", "chosen": "Yes.", "rejected": "No."},
            {
                "id": "mismatch",
                "prompt": "<|AUDIO|> and <|AUDIO|>",
                "audio": ["clips/a.wav"],
                "chosen": "c",
                "rejected": "r",
            },
            {
                "id": "literal",
                "messages": [{"role": "user", "content": "say <|AUDIO|>"}],
                "chosen": "c",
                "rejected": "r",
            },
            {"id": "missing", "messages": [user_audio("clips/none.wav")], "chosen": "c", "rejected": "r"},
            {"id": "corrupt", "messages": [user_audio("clips/corrupt.wav")], "chosen": "c", "rejected": "r"},
            {"id": "too-long", "messages": [user_audio("clips/b.wav")], "chosen": "Glass.", "rejected": long_answer},
            {"id": "audio-in-completion", "prompt": "p", "chosen": "<|AUDIO|>", "rejected": "r"},
            "{broken",
        ],
    )
    examples, bad = read_examples(path, preference=True)
    pairs, report = validate_examples(examples, processor, max_length=200, bad_records=bad, source=path)
    assert [p.id for p in pairs] == ["ok", "sft-like"]
    assert (report.total, report.kept, report.dropped) == (9, 2, 7)
    assert (
        report.audio_mismatch,
        report.unreadable_audio,
        report.too_long,
        report.bad_records,
        report.prompt_errors,
    ) == (2, 2, 1, 1, 1)
    samples = {k: dict(v) for k, v in report.samples.items()}
    assert "2 <|AUDIO|> placeholders but 1 audio files" in samples["audio_mismatch"]["mismatch"]
    assert "literal <|AUDIO|>" in samples["audio_mismatch"]["literal"]
    assert set(samples["unreadable_audio"]) == {"missing", "corrupt"}
    assert "rejected has" in samples["too_long"]["too-long"] and "> max_length 200" in samples["too_long"]["too-long"]
    assert "audio tokens" in samples["prompt_errors"]["audio-in-completion"]
    ok = pairs[0]
    assert ok.chosen.mels is ok.rejected.mels and ok.chosen.num_prompt_tokens == ok.rejected.num_prompt_tokens
    assert all(p.chosen.num_tokens <= 200 and p.rejected.num_tokens <= 200 for p in pairs)
    summary = report.summary()
    assert summary.splitlines()[0] == (
        f"{path}: 9 examples, 2 kept, 7 dropped (2 audio count vs placeholders "
        "mismatch, 2 unreadable audio, 1 too long (> 200 tokens), 1 bad records, "
        "1 other prompt errors)"
    )
    assert len(summary.splitlines()) == 6
    assert json.loads(json.dumps(report.to_dict()))["dropped"]["too_long"] == 1


def test_too_long_is_dropped_not_truncated(processor, data_dir):
    ex = PreferenceExample("long", {"messages": [user_audio(str(data_dir / "clips" / "c.wav"))]}, "Yes, glass.", "No.")
    (pair,), _ = validate_examples([ex], processor, max_length=10_000)
    n = max(pair.chosen.num_tokens, pair.rejected.num_tokens)
    (kept,), report = validate_examples([ex], processor, max_length=n)  # exactly max_length: kept, whole
    assert kept.chosen.token_ids == pair.chosen.token_ids and report.too_long == 0
    with pytest.raises(DataError, match="every example was invalid.*1 too long.*has .* tokens > max_length"):
        validate_examples([ex], processor, max_length=n - 1)


def test_sft_validation_and_completion_suffix(processor, data_dir, qwen2_tokenizer):  # noqa: F811
    ex = PreferenceExample("sft", {"messages": [user_audio(str(data_dir / "clips" / "a.wav"))]}, "Glass.", None)
    (pair,), report = validate_examples([ex], processor, max_length=500, completion_suffix="<|im_end|>")
    assert pair.rejected is None and report.kept == 1
    n = pair.chosen.num_prompt_tokens
    assert pair.chosen.token_ids[n:] == qwen2_tokenizer.encode("Glass.") + [qwen2_tokenizer.token_to_id("<|im_end|>")]


def test_all_invalid_raises(processor, data_dir):
    path = write_jsonl(
        data_dir / "allbad.jsonl",
        [{"id": "m", "messages": [user_audio("clips/none.wav")], "chosen": "c", "rejected": "r"}, "nope"],
    )
    examples, bad = read_examples(path, preference=True)
    with pytest.raises(DataError, match=r"every example was invalid: .*allbad.jsonl: 2 examples, 0 kept"):
        validate_examples(examples, processor, max_length=100, bad_records=bad, source=path)
    with pytest.raises(DataError, match="no records"):
        validate_examples([], processor, max_length=100)


def test_pair_fingerprint(processor, data_dir):
    exs = [
        PreferenceExample(f"e{i}", {"messages": [user_audio(str(data_dir / "clips" / "a.wav"))]}, c, r)
        for i, (c, r) in enumerate([("Glass.", "Dog."), ("Rain.", None)])
    ]
    pairs, _ = validate_examples(exs, processor, max_length=500)
    again, _ = validate_examples(exs, processor, max_length=500)
    fp = pair_fingerprint(pairs)
    assert len(fp) == 64 and fp == pair_fingerprint(again)
    assert fp != pair_fingerprint(pairs[::-1]) and fp != pair_fingerprint(pairs[:1])
    renamed, _ = validate_examples(
        [PreferenceExample("other", exs[0].request, "Glass.", "Dog."), exs[1]], processor, max_length=500
    )
    assert pair_fingerprint(renamed) != fp
    other_clip, _ = validate_examples(
        [
            PreferenceExample("e0", {"messages": [user_audio(str(data_dir / "clips" / "c.wav"))]}, "Glass.", "Dog."),
            exs[1],
        ],
        processor,
        max_length=500,
    )
    assert pair_fingerprint(other_clip) != fp  # a clip of another length changes the mel length and audio tokens
    light, _ = validate_examples(exs, processor, max_length=500, keep_mels=False)
    assert pair_fingerprint(light) == fp and light[0].chosen.mels == [] and light[0].chosen.mel_lengths
