"""Processor: ids, masks and features identical to transformers 4.57.6 `Qwen2AudioProcessor` (+ its default chat
template), Qwen-Audio v1 prompts (docs/reference.md §3.3), long-audio chunking, completions, collation and typed
errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from qwen_audio_jax.audio.load import load_audio
from qwen_audio_jax.audio.load_v1 import load_audio_v1
from qwen_audio_jax.errors import AudioError, PromptError
from qwen_audio_jax.text.chat_template import audio_parts, make_context_v1, render_chat, v1_from_list_format
from qwen_audio_jax.text.processor import PreparedRequest, Processor, collate, num_audio_tokens
from tests._oracles import require
from tests._paths import fixture_clips
from tests._tokenizer_dirs import make_qwen2_audio_tokenizer_dir
from tests._tokenizer_fixtures import *  # noqa: F403 (session fixtures)

FEATURE_ATOL = 1e-4  # the features tests' fixed tolerance (torch vs numpy STFT)
A, BOS, EOS = 151646, 151647, 151648
V1_ASR_TAGS = "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"


def synth(n: int, seed: int = 0) -> np.ndarray:
    """A deterministic 16 kHz test waveform of n samples (tone + noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    return (0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


W_GLASS = synth(64800, 1)  # 4.05 s: 405 mel frames -> 101 audio tokens (docs/reference.md §1.4)
W_7S = synth(16000 * 7 + 37, 2)
W_SHORT = synth(1000, 3)
W_30S = synth(480000, 4)
W_ODD = synth(12345, 5)


def conv(*parts, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + list(parts)


def user(*items):
    return {
        "role": "user",
        "content": [
            {"type": "audio", "audio": x} if isinstance(x, np.ndarray) else {"type": "text", "text": x} for x in items
        ],
    }


CONV_GOLDEN = conv(user(W_GLASS, "What's that sound?"))
CONV_SYSTEM = conv(user(W_7S, "Transcribe this."), system="You are a careful transcriber.")
CONV_MULTI = conv(
    user(W_GLASS, "What's that sound?"),
    {"role": "assistant", "content": "It is the sound of glass shattering."},
    user(W_ODD, "How about this one?"),
)
CONV_TWO_CLIPS = conv(user("Compare:", W_SHORT, W_30S, "Which is longer?"))
CONV_TEXT = conv({"role": "user", "content": "Tell me a joke about 12345 cats.\n"})
RAW_PROMPT = {"prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:", "audio": [W_7S]}
BARE_PROMPT = {
    "prompt": "Listen <|AUDIO|>, then <|AUDIO|><|audio_eos|> and <|audio_bos|><|AUDIO|>.",
    "audio": [W_ODD, W_SHORT, W_GLASS],
}

CASES = {
    "golden": [CONV_GOLDEN],
    "system_prompt": [CONV_SYSTEM],
    "multi_turn": [CONV_MULTI],
    "two_clips_one_turn": [CONV_TWO_CLIPS],
    "text_only": [CONV_TEXT],
    "raw_prompt": [RAW_PROMPT],
    "bare_audio_autowrap": [BARE_PROMPT],
    "mixed_batch": [CONV_GOLDEN, CONV_TEXT, RAW_PROMPT, CONV_MULTI, BARE_PROMPT],
}


@pytest.fixture(scope="module")
def processor(qwen2_tokenizer):
    return Processor(qwen2_tokenizer)


@pytest.fixture(scope="module")
def hf_processor(qwen2_tok_dir):
    transformers = require("transformers", "the parity oracle")
    tok = transformers.Qwen2TokenizerFast.from_pretrained(str(qwen2_tok_dir))  # own copy: padding_side mutates
    fe = transformers.WhisperFeatureExtractor(feature_size=128)
    return transformers.Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)


def hf_inputs(hf, requests, padding_side="left"):
    """transformers' inputs for our request list: chat template for conversations, flat audio list."""
    texts, audios = [], []
    for r in requests:
        if isinstance(r, dict):
            texts.append(r["prompt"])
            audios += list(r["audio"])
        else:
            texts.append(hf.apply_chat_template(r, add_generation_prompt=True, tokenize=False))
            audios += audio_parts(r)
    hf.tokenizer.padding_side = padding_side
    return hf(text=texts, audio=audios or None, sampling_rate=16000, return_tensors="np", padding=True)


def assert_same_inputs(ours, hf):
    np.testing.assert_array_equal(ours.tokens, hf["input_ids"])
    np.testing.assert_array_equal(ours.attention_mask, hf["attention_mask"])
    if "input_features" not in hf:
        assert ours.mel is None and ours.mel_lengths is None
        return
    assert ours.mel.shape == hf["input_features"].shape and ours.mel.dtype == np.float32
    np.testing.assert_allclose(ours.mel, hf["input_features"], atol=FEATURE_ATOL, rtol=0)
    feature_mask = np.arange(3000)[None, :] < ours.mel_lengths[:, None]
    np.testing.assert_array_equal(feature_mask, hf["feature_attention_mask"].astype(bool))


@pytest.mark.parity
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(case, padding_side, processor, hf_processor):
    requests = CASES[case]
    ours = processor(requests, padding_side=padding_side)
    assert_same_inputs(ours, hf_inputs(hf_processor, requests, padding_side))
    assert ours.clips_per_row.tolist() == [
        len(processor.prepare(r).mels) if isinstance(r, dict) else len(audio_parts(r)) for r in requests
    ]


@pytest.mark.parity
def test_rendered_chat_is_byte_identical(hf_processor):
    for requests in CASES.values():
        for r in requests:
            if isinstance(r, dict):
                continue
            for add in (True, False):
                assert render_chat(r, add_generation_prompt=add) == hf_processor.apply_chat_template(
                    r, add_generation_prompt=add, tokenize=False
                )


def test_golden_sequence(processor):
    """docs/reference.md §4.3 through the whole processor: a 64800-sample clip -> 101 audio tokens."""
    req = processor.prepare_messages(CONV_GOLDEN)
    assert req.token_ids == [
        151644,
        8948,
        198,
        2610,
        525,
        264,
        10950,
        17847,
        13,
        151645,
        198,
        151644,
        872,
        198,
        14755,
        220,
        16,
        25,
        220,
        BOS,
        *[A] * 101,
        EOS,
        198,
        3838,
        594,
        429,
        5112,
        30,
        151645,
        198,
        151644,
        77091,
        198,
    ]
    assert req.mel_lengths == [405] and num_audio_tokens(405) == 101
    assert len(req.mels) == 1 and req.mels[0].shape == (128, 3000) and req.mels[0].dtype == np.float32


@pytest.mark.parity
@pytest.mark.parametrize("clip", fixture_clips()[:4], ids=lambda p: p.name)
def test_real_clips_match_transformers(clip, processor, hf_processor):
    wav = load_audio(clip)
    requests = [conv(user(wav, "Describe the audio.")), {"prompt": "<|AUDIO|>Caption:", "audio": [wav]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clips over 30 s are truncated, as transformers does
        ours = processor(requests)
    assert_same_inputs(ours, hf_inputs(hf_processor, requests))


@pytest.mark.parity
def test_long_audio_truncate_and_chunk(qwen2_tokenizer, hf_processor):
    long = synth(16000 * 70, 6)  # 70 s -> chunks of 30 + 30 + 10 s
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>Transcribe:"
    with pytest.warns(UserWarning, match="truncated"):
        ours = Processor(qwen2_tokenizer)([{"prompt": prompt, "audio": [long]}])
    assert_same_inputs(ours, hf_inputs(hf_processor, [{"prompt": prompt, "audio": [long]}]))

    req = Processor(qwen2_tokenizer, long_audio="chunk").prepare_prompt(prompt, [long])
    assert req.mel_lengths == [3000, 3000, 1000]
    assert req.token_ids[: 750 + 2 + 750 + 2 + 250 + 2] == (
        [BOS] + [A] * 750 + [EOS] + [BOS] + [A] * 750 + [EOS] + [BOS] + [A] * 250 + [EOS]
    )
    # Same as three explicit clips in transformers.
    chunks = [long[:480000], long[480000:960000], long[960000:]]
    three = {"prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>" * 3 + "Transcribe:", "audio": chunks}
    ours = collate([req], pad_id=qwen2_tokenizer.pad_id)
    assert_same_inputs(ours, hf_inputs(hf_processor, [three]))
    # A bare placeholder is wrapped once around all the chunks.
    bare = Processor(qwen2_tokenizer, long_audio="chunk").prepare_prompt("<|AUDIO|>", [long])
    assert bare.token_ids == [BOS] + [A] * 750 + [EOS, BOS] + [A] * 750 + [EOS, BOS] + [A] * 250 + [EOS]


def test_completion_mask_and_collate(processor, qwen2_tokenizer):
    completion = "It is the sound of glass shattering.<|im_end|>"
    req = processor.prepare_messages(CONV_GOLDEN, completion=completion)
    prompt = processor.prepare_messages(CONV_GOLDEN)
    comp_ids = qwen2_tokenizer.encode(completion)
    assert req.token_ids == prompt.token_ids + comp_ids and comp_ids[-1] == 151645
    assert req.num_prompt_tokens == len(prompt.token_ids)
    assert req.completion_mask == [0] * len(prompt.token_ids) + [1] * len(comp_ids)

    text_only = processor.prepare_messages(CONV_TEXT)
    T = req.num_tokens + 7
    for side in ("left", "right"):
        batch = processor.collate([req, text_only], padding_side=side, pad_to_length=T)
        assert batch.tokens.shape == batch.attention_mask.shape == batch.completion_mask.shape == (2, T)
        assert batch.tokens.dtype == np.int32 and batch.attention_mask.dtype == np.int32
        assert batch.mel.shape == (1, 128, 3000) and batch.mel_lengths.tolist() == [405]
        assert batch.clips_per_row.tolist() == [1, 0]
        row = batch.tokens[0][batch.attention_mask[0] == 1].tolist()
        assert row == req.token_ids
        assert batch.completion_mask[0][batch.attention_mask[0] == 1].tolist() == req.completion_mask
        assert batch.completion_mask[1].sum() == 0
        pad_cols = batch.attention_mask[1] == 0
        assert (batch.tokens[1][pad_cols] == qwen2_tokenizer.pad_id).all()
        assert bool(pad_cols[0]) == (side == "left")
    with pytest.raises(PromptError, match="pad_to_length"):
        processor.collate([req], pad_to_length=req.num_tokens - 1)
    with pytest.raises(PromptError, match="audio"):
        processor.prepare_messages(CONV_TEXT, completion="<|AUDIO|>")


def test_placeholder_count_mismatch(processor):
    with pytest.raises(PromptError, match=r"2 <\|AUDIO\|> placeholders but 1 audio"):
        processor.prepare_prompt("<|AUDIO|> and <|AUDIO|>", audio=[W_SHORT])
    with pytest.raises(PromptError, match=r"0 <\|AUDIO\|> placeholders but 1 audio"):
        processor.prepare_prompt("no placeholder", audio=[W_SHORT])
    # A literal placeholder typed into a message adds one the audio list does not have.
    with pytest.raises(PromptError, match=r"2 <\|AUDIO\|> placeholders but 1 audio"):
        processor.prepare_messages(conv(user(W_SHORT, "what about <|AUDIO|>?")))
    with pytest.raises(PromptError, match="more audio placeholders"):
        processor(["<|AUDIO|>", "<|AUDIO|>"], audio=[W_SHORT])
    with pytest.raises(PromptError, match="left over"):
        processor(["<|AUDIO|>"], audio=[W_SHORT, W_SHORT])


def test_missing_audio_file_names_the_file(processor, tmp_path):
    missing = tmp_path / "nowhere" / "missing_clip.wav"
    with pytest.raises(AudioError, match="missing_clip.wav"):
        processor.prepare_prompt("<|AUDIO|>hi", audio=[str(missing)])
    with pytest.raises(AudioError, match="missing_clip.wav"):
        processor.prepare_messages(conv({"role": "user", "content": [{"type": "audio", "audio": str(missing)}]}))


def test_prepare_many_isolates_errors(processor, tmp_path):
    out = processor.prepare_many(
        [
            {"messages": CONV_GOLDEN},
            {"prompt": "<|AUDIO|>", "audio": [str(tmp_path / "gone.wav")]},
            {"prompt": "<|AUDIO|><|AUDIO|>", "audio": [W_SHORT]},
            {"nothing": 1},
            {"prompt": "plain text"},
        ]
    )
    assert isinstance(out[0], PreparedRequest) and isinstance(out[4], PreparedRequest)
    assert isinstance(out[1], AudioError) and "gone.wav" in str(out[1])
    assert isinstance(out[2], PromptError) and isinstance(out[3], PromptError)


@pytest.mark.parity
def test_model_dir_chat_template(tmp_path, qwen2_tokenizer):
    """A processor-level chat_template.json is used (as transformers does); tokenizer_config's is not."""
    transformers = require("transformers", "the parity oracle")
    template = (
        "{% for m in messages %}[{{ m['role'] }}]{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for c in m['content'] %}{% if c['type'] == 'audio' %}<|audio_bos|><|AUDIO|>"
        "<|audio_eos|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    for kw in ({"processor_chat_template": template}, {"chat_template": template}):
        d = make_qwen2_audio_tokenizer_dir(tmp_path / next(iter(kw)), **kw)
        transformers.WhisperFeatureExtractor(feature_size=128).save_pretrained(str(d))
        ours, hf = Processor.from_model_dir(d), transformers.Qwen2AudioProcessor.from_pretrained(str(d))
        for c in (CONV_MULTI, CONV_TEXT):
            text = hf.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            assert ours.prepare_messages(c).prompt_text == text
            assert ("[user]" in text) == ("processor_chat_template" in kw)
        assert_same_inputs(
            ours([CONV_MULTI]),
            hf(
                text=[hf.apply_chat_template(CONV_MULTI, add_generation_prompt=True, tokenize=False)],
                audio=audio_parts(CONV_MULTI),
                return_tensors="np",
                sampling_rate=16000,
                padding=True,
            ),
        )
    assert json.loads((tmp_path / "chat_template" / "tokenizer_config.json").read_text())["chat_template"] == template


# ---------------------------------------------------------------------------------------------------------------
# Qwen-Audio v1
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v1_processor(qwen_v1_tokenizer):
    return Processor(qwen_v1_tokenizer)


@pytest.fixture(scope="module")
def v1_clip(tmp_path_factory):
    """A 16 kHz float wav of 64325 samples: floor length 402 -> 100 tokens (the ceil rule would give 101)."""
    sf = pytest.importorskip("soundfile")
    path = tmp_path_factory.mktemp("v1audio") / "clip.wav"
    sf.write(path, synth(402 * 160 + 5, 7), 16000, subtype="FLOAT")
    return path


def test_v1_asr_prompt_ids(v1_processor, v1_clip):
    """docs/reference.md §3.3: `<audio>path</audio>` + the ASR tags."""
    req = v1_processor.prepare_prompt(f"<audio>{v1_clip}</audio>{V1_ASR_TAGS}")
    assert num_audio_tokens(402) == 100 and num_audio_tokens(403) == 101
    assert req.mel_lengths == [402]
    assert req.token_ids == [155163, *[151851] * 100, 155164, 151852, 151859, 151855, 151859, 151868, 154877]
    assert len(req.mels) == 1 and req.mels[0].shape == (80, 3000)
    # An explicit waveform replaces the span's path, in order.
    # A v1 file loads as Qwen-Audio loads it (FFmpeg, 16-bit: tests/test_audio_load_v1.py), an array as given.
    again = v1_processor.prepare_prompt(f"<audio>any label</audio>{V1_ASR_TAGS}", audio=[load_audio_v1(v1_clip)])
    assert again.token_ids == req.token_ids
    np.testing.assert_array_equal(again.mels[0], req.mels[0])


@pytest.mark.parity
def test_v1_features_match_whisper_80(v1_processor, v1_clip):
    transformers = require("transformers", "the parity oracle")
    wav = load_audio_v1(v1_clip)  # Qwen-Audio's loading (tests/test_audio_load_v1.py checks it against ffmpeg)
    ref = transformers.WhisperFeatureExtractor(feature_size=80)(wav, sampling_rate=16000, return_tensors="np")
    mel = v1_processor.prepare_prompt(f"<audio>{v1_clip}</audio>").mels[0]
    np.testing.assert_allclose(mel, ref["input_features"][0], atol=FEATURE_ATOL, rtol=0)


def test_v1_chat_make_context(v1_processor, qwen_v1_tokenizer, v1_clip):
    tok = qwen_v1_tokenizer
    messages = [
        {"role": "user", "content": [{"type": "audio", "audio": str(v1_clip)}, {"type": "text", "text": "what is it?"}]}
    ]
    req = v1_processor.prepare_messages(messages)
    query = v1_from_list_format([{"audio": str(v1_clip)}, {"text": "what is it?"}])
    assert query == f"Audio 1:<audio>{v1_clip}</audio>\nwhat is it?"
    assert req.prompt_text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{query}<|im_end|>\n<|im_start|>assistant\n"
    )
    e = tok.encode
    assert req.token_ids == (
        [151644]
        + e("system")
        + [198]
        + e("You are a helpful assistant.")
        + [151645, 198, 151644]
        + e("user")
        + [198]
        + e("Audio 1:")
        + [155163]
        + [151851] * 100
        + [155164]
        + e("\nwhat is it?")
        + [151645, 198, 151644]
        + e("assistant")
        + [198]
    )
    # History: earlier turns are kept (and their audio) while they fit the window; the reference's
    # make_context tokenizes message text with only the audio tags special, so a typed <|im_start|> is text.
    history = [(query, "A beep."), ("<|im_start|> literal", "ok")]
    raw, ids = make_context_v1(tok, "and now?", history)
    assert raw.count("<|im_start|>") == 8 and ids.count(151644) == 7
    raw_small, ids_small = make_context_v1(tok, "and now?", history, max_window_size=40)
    assert "A beep." not in raw_small and len(ids_small) < len(ids)
    multi = v1_processor.prepare_messages(
        [
            messages[0],
            {"role": "assistant", "content": "A beep."},
            {"role": "user", "content": [{"type": "audio", "audio": W_GLASS}]},
        ]
    )
    assert multi.mel_lengths == [402, 405] and multi.token_ids.count(155163) == 2


def test_v1_errors(v1_processor, v1_clip, tmp_path):
    with pytest.raises(PromptError, match="never closed"):
        v1_processor.prepare_prompt(f"<audio>{v1_clip}{V1_ASR_TAGS}", audio=[])
    with pytest.raises(PromptError, match="1 <audio>...</audio> spans but 2"):
        v1_processor.prepare_prompt(f"<audio>{v1_clip}</audio>", audio=[W_SHORT, W_SHORT])
    with pytest.raises(AudioError, match="absent.flac"):
        v1_processor.prepare_prompt(f"<audio>{tmp_path / 'absent.flac'}</audio>")
    with pytest.raises(PromptError, match="ending with user"):
        v1_processor.prepare_messages([{"role": "assistant", "content": "hi"}])
