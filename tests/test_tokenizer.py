"""Tokenizers: ids and text identical to transformers' Qwen2 tokenizers (fast and slow) on real BPE files, the
golden Qwen2-Audio sequence of docs/reference.md §4.3, and Qwen-Audio v1's special-token table (docs/reference.md
§3.3 / §3.5)."""

from __future__ import annotations

import json
import shutil

import pytest

from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.text.chat_template import render_chat
from qwen_audio_jax.text.tokenizer import (
    Qwen2AudioTokenizer,
    QwenAudioV1Tokenizer,
    load_tokenizer,
    v1_special_tokens,
)
from tests._oracles import require
from tests._tokenizer_fixtures import *  # noqa: F403 (session fixtures)

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, they'd've gone!",
    "你好，世界！今天天气很好。",
    "こんにちは、世界。カタカナとひらがな",
    "한국어 텍스트",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "12345 and 3.14159 and 1,000,000",
    "a   b\t\tc\r\nd\n\n\ne  \n  f",
    "\t\ttabs\tinside\t",
    "line one\r\nline two\rline three\n",
    "a<|im_start|>b<|AUDIO|><|AUDIO|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:",
    "  leading and trailing spaces  ",
    " ",
    "",
    "café",  # NFC é
    "cafe\u0301",  # NFD e + combining acute: NFC makes it the same ids as "café"
    "Ünïcödé ÅÄÖ ß ﬁ ligature",
    "\u00a0nbsp \u2003em-space \u200bzero-width \u3000ideographic",
    "don't I'LL you've THEY'RE",
    "<|im_end|><|endoftext|> <|audio_eos|>x",
    "<|AUDIO| not a token |> <|extra_0|> <|en|> <|0.00|>",
    "def f(x):\n    return x ** 2  # comment\n",
    "Mixed 中文 and English, 日本語 too 123!",
]


@pytest.mark.parity
@pytest.mark.parametrize("text", CORPUS)
def test_qwen2_ids_match_transformers(
    text, qwen2_tokenizer, qwen2_json_tokenizer, hf_fast_tokenizer, hf_slow_tokenizer
):
    ours = qwen2_tokenizer.encode(text)
    assert ours == qwen2_json_tokenizer.encode(text)
    assert ours == hf_fast_tokenizer(text)["input_ids"]
    assert ours == hf_slow_tokenizer(text)["input_ids"]
    for skip in (False, True):
        expected = hf_fast_tokenizer.decode(ours, skip_special_tokens=skip)
        assert qwen2_tokenizer.decode(ours, skip_special_tokens=skip) == expected
        assert qwen2_json_tokenizer.decode(ours, skip_special_tokens=skip) == expected
        assert hf_slow_tokenizer.decode(ours, skip_special_tokens=skip) == expected


@pytest.mark.parity
def test_qwen2_round_trip_and_partial_bytes(qwen2_tokenizer, hf_fast_tokenizer, hf_slow_tokenizer):
    import unicodedata

    for text in CORPUS:
        assert qwen2_tokenizer.decode(qwen2_tokenizer.encode(text)) == unicodedata.normalize("NFC", text)
    # Slices that cut multi-byte characters decode to U+FFFD identically everywhere.
    ids = qwen2_tokenizer.encode("😀👍🏽 你好 𝔘𝔫𝔦𝔠𝔬𝔡𝔢")
    for k in range(len(ids)):
        for sub in (ids[k : k + 1], ids[:k], ids[k:], ids[:k] + [151644] + ids[k:]):
            assert qwen2_tokenizer.decode(sub) == hf_fast_tokenizer.decode(sub) == hf_slow_tokenizer.decode(sub)


def test_qwen2_nfc(qwen2_tokenizer):
    assert qwen2_tokenizer.encode("cafe\u0301") == qwen2_tokenizer.encode("caf\u00e9")


@pytest.mark.parity
def test_qwen2_vocab_and_special_ids(qwen2_tokenizer, qwen2_json_tokenizer, hf_fast_tokenizer, hf_slow_tokenizer):
    for tok in (qwen2_tokenizer, qwen2_json_tokenizer):
        assert len(tok) == tok.vocab_size == len(hf_fast_tokenizer) == len(hf_slow_tokenizer) == 151649
        assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id) == (151643, 151644, 151645)
        assert (tok.audio_token_id, tok.audio_bos_id, tok.audio_eos_id) == (151646, 151647, 151648)
        assert tok.eos_id == hf_fast_tokenizer.eos_token_id == 151645  # Instruct config: eos <|im_end|>
        assert tok.pad_id == hf_fast_tokenizer.pad_token_id == 151643
        assert tok.special_ids == frozenset(range(151643, 151649)) == frozenset(hf_slow_tokenizer.all_special_ids)
        assert tok.special_tokens_map == hf_fast_tokenizer.special_tokens_map
        for i in (0, 198, 8948, 151642, 151643, 151648):
            assert tok.id_to_token(i) == hf_fast_tokenizer.convert_ids_to_tokens(i)
            assert tok.token_to_id(tok.id_to_token(i)) == i
        assert tok.token_to_id("<|not_a_token|>") is None


def test_qwen2_golden_sequence(qwen2_tokenizer):
    """docs/reference.md §4.3: the Instruct chat with one 4.05 s clip (101 audio tokens)."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio_url": "glass-breaking-151256.mp3"},
                {"type": "text", "text": "What's that sound?"},
            ],
        }
    ]
    text = render_chat(messages, add_generation_prompt=True).replace("<|AUDIO|>", "<|AUDIO|>" * 101)
    assert qwen2_tokenizer.encode(text) == [
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
        151647,
        *[151646] * 101,
        151648,
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


def test_load_tokenizer_picks_the_family(qwen2_tok_dir, qwen2_tok_json_dir, qwen_v1_tok_dir, tmp_path):
    assert isinstance(load_tokenizer(qwen2_tok_dir), Qwen2AudioTokenizer)
    assert isinstance(load_tokenizer(qwen2_tok_json_dir), Qwen2AudioTokenizer)
    assert isinstance(load_tokenizer(qwen_v1_tok_dir), QwenAudioV1Tokenizer)
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_added_token_id_gap_is_a_config_error(qwen2_tok_dir, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(qwen2_tok_dir / name, tmp_path / name)
    config = json.loads((qwen2_tok_dir / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["151700"] = config["added_tokens_decoder"].pop("151648")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="151700"):
        Qwen2AudioTokenizer.from_dir(tmp_path)


def test_plain_qwen2_tokenizer_has_no_audio_token(tmp_path):
    from tests._tokenizer_dirs import qwen2_bpe_files

    vocab, merges = qwen2_bpe_files()
    shutil.copyfile(vocab, tmp_path / "vocab.json")
    shutil.copyfile(merges, tmp_path / "merges.txt")
    tok = Qwen2AudioTokenizer.from_dir(tmp_path)  # no config: transformers' defaults (eos = pad = <|endoftext|>)
    assert tok.eos_id == tok.pad_id == 151643
    transformers = require("transformers", "the parity oracle")
    for hf in (
        transformers.Qwen2TokenizerFast.from_pretrained(str(tmp_path)),
        transformers.Qwen2Tokenizer.from_pretrained(str(tmp_path)),
    ):
        assert len(hf) == len(tok) == 151644
        assert hf.eos_token_id == hf.pad_token_id == 151643
        assert hf("a<|endoftext|>b")["input_ids"] == tok.encode("a<|endoftext|>b")
    with pytest.raises(ConfigError, match="<\\|AUDIO\\|>"):
        _ = tok.audio_token_id


# ---------------------------------------------------------------------------------------------------------------
# Qwen-Audio v1 (tiktoken)
# ---------------------------------------------------------------------------------------------------------------


def test_v1_special_token_table(qwen_v1_tokenizer):
    tok = qwen_v1_tokenizer
    assert len(v1_special_tokens()) == 155165 - 151643
    assert len(tok) == tok.vocab_size == 155165
    expected = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|extra_0|>": 151646,
        "<|extra_204|>": 151850,
        "[[[AUDIO:modality]]]": 151851,
        "<|startoftranscript|>": 151852,
        "<|startofanalysis|>": 151853,
        "<|translate|>": 151854,
        "<|transcribe|>": 151855,
        "<|caption|>": 151856,
        "<|keyword|>": 151857,
        "<|unknown|>": 151858,
        "<|en|>": 151859,
        "<|zh|>": 151860,
        "<|it|>": 151866,
        "<|zh_tr|>": 151867,
        "<|notimestamps|>": 151868,
        "<|sil|>": 151869,
        "<|timestamps|>": 151870,
        "<|0.00|>": 151871,
        "<|0.01|>": 151872,
        "<|15.37|>": 151871 + 1537,
        "<|30.00|>": 154871,
        "<|caption_audiocaps|>": 154872,
        "<|itn|>": 154876,
        "<|wo_itn|>": 154877,
        "<|delim|>": 154886,
        "<|emotion_recognition|>": 154887,
        "<|midi_pitch_0|>": 154891,
        "<|midi_pitch_127|>": 155018,
        "<|velocity|>": 155019,
        "<|midi_velocity_127|>": 155147,
        "<|sonic|>": 155148,
        "<|question|>": 155152,
        "<|answer|>": 155153,
        "<|scene|>": 155155,
        "<|vocal_classification|>": 155157,
        "<|speech_edit|>": 155162,
        "<audio>": 155163,
        "</audio>": 155164,
    }
    for token, i in expected.items():
        assert tok.token_to_id(token) == i, token
        assert tok.id_to_token(i) == token
        assert tok.encode(f"x{token}y") == tok.encode("x") + [i] + tok.encode("y")
    # Every timestamp at 0.01 s resolution: id = 151871 + round(100 t).
    for k in range(3001):
        assert tok.token_to_id(f"<|{k / 100:.2f}|>") == 151871 + k
    assert (tok.audio_bos_id, tok.audio_token_id, tok.audio_eos_id) == (155163, 151851, 155164)
    assert tok.eos_id == tok.pad_id == 151643
    # The ids that end generation come from the model config (one place), and agree with v1's chatml stop words.
    from qwen_audio_jax.config import qwen_audio_7b

    assert qwen_audio_7b().stop_ids == (tok.endoftext_id, tok.im_end_id, tok.im_start_id) == (151643, 151645, 151644)


def test_v1_asr_prompt_ids(qwen_v1_tokenizer):
    """docs/reference.md §3.3: the official ASR eval's task tags."""
    ids = qwen_v1_tokenizer.encode("<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>")
    assert ids == [151852, 151859, 151855, 151859, 151868, 154877]


def test_v1_startoftranscription_is_not_special(qwen_v1_tokenizer):
    """docs/reference.md §3.3 caveat: the README's `<|startoftranscription|>` is BPE-split, not a tag."""
    ids = qwen_v1_tokenizer.encode("<|startoftranscription|>")
    assert len(ids) > 1 and all(i < 151643 for i in ids)
    assert qwen_v1_tokenizer.token_to_id("<|startoftranscription|>") is None
    assert qwen_v1_tokenizer.decode(ids) == "<|startoftranscription|>"


@pytest.mark.parametrize("text", [t for t in CORPUS if "<|" not in t])
def test_v1_text_ids_equal_qwen2(text, qwen_v1_tokenizer, qwen2_tokenizer):
    """Same 151,643 ranks: plain text encodes to the same ids with both families."""
    ids = qwen_v1_tokenizer.encode(text)
    assert ids == qwen2_tokenizer.encode(text)
    assert qwen_v1_tokenizer.decode(ids) == qwen2_tokenizer.decode(ids)


def test_v1_specials_decode_and_skip(qwen_v1_tokenizer, qwen2_tokenizer):
    tok = qwen_v1_tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|><|en|>")
    assert ids[0] == 151644 and ids[-2:] == [151645, 151859]
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|><|en|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    # allowed_special restricts matching (v1's make_context allows only the audio tags in messages).
    restricted = tok.encode("<|im_start|><|en|>", allowed_special=tok.audio_special_tokens)
    assert 151644 not in restricted and restricted[-1] == 151859
    # Ordinary tokens are named as in the Qwen2 vocab.json (same ranks, byte-level spelling).
    for i in (0, 198, 220, 8948, 30, 151642):
        assert tok.id_to_token(i) == qwen2_tokenizer.id_to_token(i)
        assert tok.token_to_id(tok.id_to_token(i)) == i
    assert tok.id_to_token(155165) is None


def test_v1_nfc(qwen_v1_tokenizer):
    assert qwen_v1_tokenizer.encode("cafe\u0301") == qwen_v1_tokenizer.encode("caf\u00e9")
