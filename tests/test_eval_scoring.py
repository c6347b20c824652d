"""Eval scoring: hand-made prediction/reference sets with hand-computed WER, BLEU and accuracy (the arithmetic is in
the comments), the official normalisation edge cases, tolerant manifest / prediction reading, and the output files.

Every expected value is written out, so a change in any normaliser, tokenizer or metric makes a test fail.
"""

from __future__ import annotations

import json
import math

import pytest
import sacrebleu

from qwen_audio_jax.errors import ConfigError, DataError
from qwen_audio_jax.eval import (
    ManifestEntry,
    asr_tokens,
    evaluation_tokenize,
    format_table,
    read_manifest,
    read_predictions,
    remove_sp,
    score_predictions,
    write_outputs,
)
from qwen_audio_jax.eval.caption import (
    caption_scores,
    ptb_tokenize,
    python_ptb_tokenize,
)
from qwen_audio_jax.eval.metrics import bleu_tokenizer, corpus_bleu, edit_counts
from qwen_audio_jax.eval.zh_normalizer import TextNorm, num2chn
from tests._oracles import require_binary


def E(id, reference, source="src", language="en", **kw):
    return ManifestEntry(id=id, audio=f"/a/{id}.wav", reference=reference, source=source, language=language, **kw)


# ---- the text clean-up ------------------------------------------------------------------------------------------
def test_remove_sp_drops_tags_and_spaces_before_punctuation():
    # tags -> " ", runs of spaces -> " ", " ," -> ",", leading space stripped (the trailing one stays, as in the script)
    assert remove_sp("<|en|>Hello , world !<|endoftext|>", "en") == "Hello, world! "
    # zh: every space goes; full-width punctuation is not in '!,.?;:' so it is untouched here
    assert remove_sp("<|zh|>你好 ， 世界 。", "zh") == "你好，世界。"
    assert remove_sp("<|yue|>你好 世界", "yue") == "你好 世界"  # only "zh" removes spaces


def test_evaluation_tokenizer_removes_only_all_punctuation_tokens():
    # split on " ": [hello, ",", World, "...", it's, "", OK, "?!", "—", «x», $5]; the all-P tokens (and the empty one)
    # go; «x» has a letter and $ is a symbol (Sc), so both stay; then lower case
    assert evaluation_tokenize("Hello , World ... it's  OK ?! — «x» $5") == "hello world it's ok «x» $5"
    assert evaluation_tokenize("Hello , World", punctuation_removal=False) == "hello , world"


def test_english_normaliser_numbers_contractions_british_spellings_fillers():
    assert asr_tokens("I'M NOT GOING TO THE THEATRE WITH TWENTY FIVE PEOPLE", "en") == [
        "i",
        "am",
        "not",
        "going",
        "to",
        "the",
        "theater",
        "with",
        "25",
        "people",
    ]
    assert asr_tokens("Don't worry, it's fine.", "en") == ["do", "not", "worry", "it", "is", "fine"]
    assert asr_tokens("THE COLOUR OF THE SKY", "en") == ["the", "color", "of", "the", "sky"]
    assert asr_tokens("Hmm, I think so uh.", "en") == ["i", "think", "so"]
    # EnglishTextNormalizer keeps "$25", the BasicTextNormalizer that follows in evaluate_asr.py drops the "$"
    assert asr_tokens("Mr. Smith paid twenty-five dollars.", "en") == ["mister", "smith", "paid", "25"]
    assert asr_tokens("<|en|><|endoftext|>", "en") == []
    # a Whisper quirk the published numbers include: consecutive spelled digits are joined into one number
    assert asr_tokens("one two three", "en") == ["123"]


def test_other_languages_use_the_basic_normaliser():
    assert asr_tokens("Bonjour, ça va ? (rires)", "fr") == ["bonjour", "ça", "va"]  # (...) removed, accents kept


def test_chinese_normaliser_verbalises_numbers_and_removes_punctuation():
    tn = TextNorm()
    # the examples of SpeechIO's README (cn_tn.py), punctuation turned into spaces
    assert tn("这块黄金重达324.75克") == "这块黄金重达三百二十四点七五克"
    assert (
        tn("她出生于86年8月18日，她弟弟出生于1995年3月1日") == "她出生于八六年八月十八日 她弟弟出生于一九九五年三月一日"
    )
    assert tn("电影中梁朝伟扮演的陈永仁的编号27149") == "电影中梁朝伟扮演的陈永仁的编号二七一四九"
    assert tn("现场有7/12的观众投出了赞成票") == "现场有十二分之七的观众投出了赞成票"
    assert tn("随便来几个价格12块5，34.5元，20.1万") == "随便来几个价格十二块五 三十四点五元 二十点一万"
    assert tn("明天有62％的概率降雨") == "明天有百分之六十二的概率降雨"
    assert tn("这是固话0421-33441122") == "这是固话零四二一三三四四一一二二"
    assert tn("这是手机+86 18544139121") == "这是手机八六一八五四四一三九一二一"
    assert tn("特殊：O2O或B2C。") == "特殊 O2O或B2C "  # 2 -> 二 -> restored between letters
    assert tn("今天吃了115个小笼包231个馒头") == "今天吃了一百一十五个小笼包两百三十一个馒头"  # 2 before 百 -> 两
    assert tn("《三体》“好看”吗？") == " 三体  好看 吗 "  # full-width / CJK punctuation -> spaces


def test_num2chn_edge_cases():
    # 10..19 drop the leading 一; zeros inside are read once; 2 -> 两 before 百/千/万 but not before 十
    assert [num2chn(s) for s in ["10", "15", "105", "1000000", "20", "2000", "22000", "0.5", "0"]] == [
        "十",
        "十五",
        "一百零五",
        "一百万",
        "二十",
        "两千",
        "两万两千",
        "零点五",
        "零",
    ]
    assert num2chn("2024", alt_two=False, use_units=False) == "二零二四"


def test_cantonese_is_converted_to_simplified_then_scored_per_character():
    assert asr_tokens("我們今日去學校。", "yue") == list("我们今日去学校")
    assert asr_tokens("食飯未呀？", "yue") == list("食饭未呀")


# ---- WER -------------------------------------------------------------------------------------------------------
def test_edit_counts_split_substitutions_insertions_deletions():
    c = edit_counts(["a", "b", "c", "d"], ["a", "x", "c", "d", "e"])  # b->x (S), e inserted (I)
    assert (c.ref_len, c.substitutions, c.insertions, c.deletions, c.errors) == (4, 1, 1, 0, 2)
    assert edit_counts([], ["x"]).insertions == 1 and edit_counts(["x"], []).deletions == 1
    assert edit_counts([], []).errors == 0


def test_english_wer_per_source_and_overall_with_tags_and_missing():
    entries = [
        E("ls1", "HE HOPED THERE WOULD BE STEW FOR DINNER", "librispeech_test_clean"),  # 8 words
        E("ls2", "I'M NOT GOING TO THE THEATRE WITH TWENTY FIVE PEOPLE", "librispeech_test_clean"),  # 10 words
        E("ls3", "THE COLOUR OF THE SKY", "librispeech_test_clean"),  # 5 words
        E("ls4", "GOOD MORNING", "librispeech_test_clean"),  # 2 words, no prediction
        E("cv1", "Don't worry, it's fine.", "cv15_en"),  # do not worry it is fine: 6
        E("cv2", "Hmm, I think so.", "cv15_en"),  # i think so: 3
    ]
    preds = {
        "ls1": "He hoped there would be stew for dinner.",  # 0 errors
        "ls2": "I am not going to the theater with 25 people.",  # 0 errors (normalisation)
        "ls3": "<|en|>the color of sky<|endoftext|>",  # "the" deleted: 1 D
        # ls4 absent: empty hypothesis, 2 D
        "cv1": "dont worry its fine",  # do/dont S, not D, it/its S, is D: 2 S + 2 D
        "cv2": "I think so uh",  # filler removed: 0
        "zzz": "not in the manifest",
    }
    r = score_predictions("asr", entries, preds)
    # librispeech: (0 + 0 + 1 + 2) / (8 + 10 + 5 + 2) = 3/25; cv15_en: 4/9; overall (3 + 4) / (25 + 9) = 7/34
    assert r.sources == {"librispeech_test_clean": {"count": 4, "wer": 3 / 25}, "cv15_en": {"count": 2, "wer": 4 / 9}}
    assert r.overall == {"count": 6, "wer": 7 / 34}
    assert r.missing == ["ls4"] and r.unmatched_predictions == ["zzz"]
    ex = {e["id"]: e for e in r.examples}
    assert (ex["cv1"]["substitutions"], ex["cv1"]["insertions"], ex["cv1"]["deletions"], ex["cv1"]["ref_len"]) == (
        2,
        0,
        2,
        6,
    )
    assert ex["ls4"]["missing"] is True and ex["ls4"]["prediction"] is None and ex["ls4"]["deletions"] == 2
    assert ex["ls3"]["normalized_prediction"] == "the color of sky"
    assert "EnglishTextNormalizer" in r.normalizer["en"]


def test_chinese_cer_with_numbers_and_full_width_punctuation():
    entries = [
        E("z1", "今天是2024年5月1日，天气很好。", "aishell2_test", "zh"),  # 今天是二零二四年五月一日天气很好: 16 chars
        E("z2", "他买了3个苹果，花了12.5元", "aishell2_test", "zh"),  # 他买了三个苹果花了十二点五元: 14 chars
        E("z3", "你好世界", "aishell2_test", "zh"),  # 4 chars
    ]
    preds = {
        "z1": "今天是二零二四年五月一号天气很好",  # 日 -> 号: 1 S
        "z2": "他买了三个苹果花了十二块五",  # 点 -> 块 (S), 元 deleted (D): 2
        "z3": "<|zh|>你好，世界！",  # tag and full-width punctuation removed: 0
    }
    r = score_predictions("asr", entries, preds)
    assert r.sources["aishell2_test"] == {"count": 3, "wer": 3 / 34}  # (1 + 2 + 0) / (16 + 14 + 4)
    ex = {e["id"]: e for e in r.examples}
    assert ex["z1"]["normalized_reference"] == "今天是二零二四年五月一日天气很好"
    assert (ex["z2"]["substitutions"], ex["z2"]["deletions"]) == (1, 1)


def test_cantonese_cer():
    entries = [E("y1", "我們今日去學校。", "cv15_yue", "yue"), E("y2", "食飯未呀？", "cv15_yue", "yue")]
    r = score_predictions("asr", entries, {"y1": "我们今日去学校", "y2": "食饭未"})
    assert r.sources["cv15_yue"]["wer"] == 1 / 11  # 0 + 1 deletion (呀) over 7 + 4 characters


def test_language_codes_are_taken_literally_with_a_note():
    # "zh-CN" is not "zh" for the official script: basic normaliser and whole words (one token here), so 1 S / 1 word
    r = score_predictions("asr", [E("a", "我有3个", "cv", "zh-CN")], {"a": "我有三个"})
    assert r.overall["wer"] == 1.0 and any("'zh-CN'" in n for n in r.notes)


def test_qwen_audio_v1_asr_keeps_punctuation_and_skips_whisper():
    entries = [E("e", "Hello, World!", "ls"), E("z", "你好，世界。", "aishell1", "zh")]
    preds = {"e": "hello world", "z": "你好世界"}
    v1 = score_predictions("asr", entries, preds, variant="qwen_audio_v1")
    # v1: "hello," / "world!" vs "hello" / "world": 2 S over 2 words; zh per char with the commas: 2 D over 6
    assert v1.sources == {"ls": {"count": 1, "wer": 1.0}, "aishell1": {"count": 1, "wer": 2 / 6}}
    v2 = score_predictions("asr", entries, preds)
    assert v2.sources == {"ls": {"count": 1, "wer": 0.0}, "aishell1": {"count": 1, "wer": 0.0}}


def test_empty_and_failed_predictions():
    entries = [E("a", "one two"), E("b", "three"), E("c", "four")]
    r = score_predictions("asr", entries, {"a": "", "b": None})  # "" is a prediction; None and absent are missing
    assert r.missing == ["b", "c"] and r.overall["wer"] == 1.0  # 4 deletions over 4 words
    with pytest.raises(ConfigError):
        score_predictions("asr", entries, {}, variant="qwen3")
    with pytest.raises(ConfigError):
        score_predictions("translate", entries, {})


# ---- BLEU ------------------------------------------------------------------------------------------------------
def test_bleu_hand_computed_13a():
    # hyp "the cat sat on a mat" vs ref "the cat sat on the mat": n-gram precisions 5/6, 3/5, 2/4, 1/3, equal
    # lengths so BP = 1: BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25 = 53.728...
    assert corpus_bleu(["the cat sat on a mat"], ["the cat sat on the mat"], "13a") == pytest.approx(
        100 * (1 / 12) ** 0.25, abs=1e-9
    )
    assert bleu_tokenizer("ja") == "ja-mecab" and bleu_tokenizer("zh-CN") == "zh" and bleu_tokenizer("de") == "13a"


def test_s2tt_bleu_matches_sacrebleu_per_tokenizer_and_overall_rule():
    de = [("d1", "Das Haus ist groß.", "Das Haus ist gross."), ("d2", "Ich habe einen Hund.", "Ich habe einen Hund.")]
    zh = [("z1", "我喜欢吃苹果。", "我喜欢吃苹果。"), ("z2", "今天天气很好", "今天天气不错")]
    ja = [("j1", "今日は良い天気ですね。", "今日はいい天気ですね。"), ("j2", "猫が好きです", "犬が好きです")]
    entries, preds = [], {}
    for src, tgt, rows in [("covost2_en_de", "de", de), ("covost2_en_zh", "zh-CN", zh), ("covost2_en_ja", "ja", ja)]:
        for rid, ref, hyp in rows:
            entries.append(E(rid, ref, src, "en", target_language=tgt))
            preds[rid] = hyp
    r = score_predictions("s2tt", entries, preds)
    for src, tok, rows in [
        ("covost2_en_de", "13a", de),
        ("covost2_en_zh", "zh", zh),
        ("covost2_en_ja", "ja-mecab", ja),
    ]:
        want = sacrebleu.corpus_bleu([h for _, _, h in rows], [[ref for _, ref, _ in rows]], tokenize=tok).score
        assert r.sources[src] == {"count": 2, "bleu": want}
    assert r.overall == {"count": 6, "bleu": None}  # three tokenizers: no overall figure, and a note says why
    assert any("overall bleu not computed" in n for n in r.notes)
    ex = {e["id"]: e for e in r.examples}
    assert ex["j1"]["normalized_prediction"] == "今日 は いい 天気 です ね 。"  # MeCab + IPAdic segmentation
    # one tokenizer for all sources: the overall is the corpus BLEU of everything
    only_de = score_predictions("s2tt", entries[:2], preds)
    assert only_de.overall["bleu"] == sacrebleu.corpus_bleu([h for *_, h in de], [[r for _, r, _ in de]]).score


def test_s2tt_text_is_raw_for_qwen2_audio_and_stripped_for_v1():
    entries = [E("a", "a b c d", "s", target_language="de")]
    v2 = score_predictions("s2tt", entries, {"a": " a b c d\n"})
    v1 = score_predictions("s2tt", entries, {"a": " a b c d\n"}, variant="qwen_audio_v1")
    assert v1.overall["bleu"] == pytest.approx(100.0)
    # sacreBLEU's 13a tokenizer trims the line itself, so leading/trailing whitespace does not change the score
    assert v2.overall["bleu"] == sacrebleu.corpus_bleu([" a b c d\n"], [["a b c d"]]).score
    assert v2.overall["bleu"] == pytest.approx(100.0)


# ---- accuracy --------------------------------------------------------------------------------------------------
def test_ser_accuracy_lstrip_for_qwen2_audio_strip_for_v1():
    entries = [E(str(i), label, "meld") for i, label in enumerate(["neutral", "joy", "anger", "sadness"])]
    preds = {"0": " neutral", "1": "joy ", "2": "Anger", "3": None}
    # qwen2_audio: lstrip only -> neutral ok, "joy " wrong, case matters, failed one wrong: 1/4
    r2 = score_predictions("ser", entries, preds)
    assert r2.overall == {"count": 4, "accuracy": 0.25} and r2.missing == ["3"]
    # v1: strip -> neutral, joy ok: 2/4
    assert score_predictions("ser", entries, preds, variant="qwen_audio_v1").overall["accuracy"] == 0.5
    assert [e["correct"] for e in r2.examples] == [True, False, False, False]


def test_vsc_accuracy_per_source():
    entries = [E("a", "Cough", "vocalsound_test"), E("b", "Laughter", "vocalsound_test"), E("c", "Sniff", "vs_dev")]
    r = score_predictions("vsc", entries, {"a": "Cough", "b": "Sneeze", "c": "Sniff"})
    assert r.sources == {"vocalsound_test": {"count": 2, "accuracy": 0.5}, "vs_dev": {"count": 1, "accuracy": 1.0}}
    assert r.overall["accuracy"] == 2 / 3


def test_aqa_accuracy_and_yes_no_subset_for_clotho_sources():
    entries = [
        E("1", "yes", "clothoaqa_test", question="Is it raining?"),
        E("2", "no", "clothoaqa_test", question="q"),
        E("3", "dog", "clothoaqa_test", question="q"),
        E("4", "Yes", "clothoaqa_test", question="q"),
        E("5", "yes", "other_aqa", question="q"),
    ]
    preds = {"1": "yes", "2": "yes", "3": "dog", "4": " Yes ", "5": "yes"}
    r = score_predictions("aqa", entries, preds)
    # clotho: yes ok, no wrong, dog ok, "Yes" ok after strip: 3/4; yes/no items 1, 2, 4 (case-insensitive pick): 2/3
    assert r.sources["clothoaqa_test"] == {"count": 4, "accuracy": 0.75, "yes_no_count": 3, "yes_no_accuracy": 2 / 3}
    assert r.sources["other_aqa"] == {"count": 1, "accuracy": 1.0}  # not a clotho source: no yes/no figure
    assert r.overall == {"count": 5, "accuracy": 0.8, "yes_no_count": 3, "yes_no_accuracy": 2 / 3}


# ---- caption ---------------------------------------------------------------------------------------------------
def test_python_ptb_tokenizer_follows_the_java_conventions():
    assert (
        python_ptb_tokenize("A dog's barking (loudly) and can't stop.")
        == "a dog 's barking -lrb- loudly -rrb- and ca n't stop"
    )
    assert (
        python_ptb_tokenize('The high-pitched "sound" ... changes; birds -- chirp!')
        == "the high-pitched sound changes birds chirp"
    )


def test_java_ptb_tokenizer_agrees_on_plain_captions():
    require_binary("java", "the runtime of the Stanford PTBTokenizer jar")
    caps = ["A dog's barking (loudly) and can't stop.", "", "Water is flowing: rain falls on a tin roof."]
    tokenized, backend = ptb_tokenize(caps, "java")
    assert backend == "java" and tokenized == [python_ptb_tokenize(c) for c in caps]


def test_caption_scores_hand_computed_bleu1_and_rouge_l():
    refs = [["a dog barks loudly", "a dog is barking"], ["birds are singing", "birds sing in trees"]]
    hyps = ["a dog barks", "birds sing"]
    scores, tok_refs, tok_hyps, _ = caption_scores(refs, hyps, tokenizer="python")
    # BLEU-1: all 5 hypothesis words match (precision 1); closest reference lengths 4 and 3, so r = 7, c = 5 and
    # BP = exp(1 - 7/5)
    assert scores["Bleu_1"] == pytest.approx(math.exp(1 - 7 / 5), abs=1e-6)
    # ROUGE-L (beta 1.2, best precision and best recall over the references):
    #   "a dog barks": P = 3/3, R = 3/4 -> 2.44 * 0.75 / (0.75 + 1.44) = 0.835616...
    #   "birds sing":  P = 2/2, R = 2/4 -> 2.44 * 0.5 / (0.5 + 1.44) = 0.628866...
    rouge = (2.44 * 0.75 / 2.19 + 2.44 * 0.5 / 1.94) / 2
    assert scores["ROUGE_L"] == pytest.approx(rouge, abs=1e-9)
    from pycocoevalcap.cider.cider import Cider

    cider, _ = Cider().compute_score(dict(enumerate(tok_refs)), {i: [h] for i, h in enumerate(tok_hyps)})
    assert scores["CIDEr"] == pytest.approx(cider)


def test_caption_task_reports_what_is_not_computed():
    entries = [
        ManifestEntry("c1", "/a.wav", ("A dog barks.", "A dog is barking."), "clotho_eval", "en"),
        ManifestEntry("c2", "/b.wav", ("Birds sing.",), "clotho_eval", "en"),
    ]
    r = score_predictions("caption", entries, {"c1": "A dog barks."}, caption_tokenizer="python")
    assert r.missing == ["c2"] and set(r.overall) == {
        "count",
        "Bleu_1",
        "Bleu_2",
        "Bleu_3",
        "Bleu_4",
        "ROUGE_L",
        "CIDEr",
    }
    assert r.not_computed == ["METEOR", "SPICE", "SPIDEr"]
    assert r.sources["clotho_eval"]["ROUGE_L"] == pytest.approx(0.5)  # c1 perfect (1.0), c2 empty (0.0)


# ---- manifest and predictions files ----------------------------------------------------------------------------
def _write_lines(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")


def test_manifest_reader_reports_every_malformed_line(tmp_path):
    good = {"audio": "clips/a.wav", "reference": "hello", "source": "ls", "language": "en"}
    lines = [
        json.dumps({"id": "a", **good}),  # 1 ok, relative audio
        "{not json",  # 2
        b'{"id": "x", "audio": "\xff.wav"}',  # 3 bad UTF-8
        json.dumps({"id": "b", **good, "gt": "hello"}),  # 4 unknown key (official name)
        json.dumps({"id": "c", "audio": "c.wav", "source": "ls", "language": "en"}),  # 5 no reference
        json.dumps({"id": "a", **good}),  # 6 duplicate id
        "",  # 7 blank: skipped, not a problem
        json.dumps([1, 2]),  # 8 not an object
        json.dumps({"id": "d", **good, "reference": 3}),  # 9 wrong type
        json.dumps({"id": "e", **good, "audio": "/abs/e.wav"}),  # 10 ok, absolute
        json.dumps({"id": "f", **good, "audio": "https://host/f.wav", "prompt": "Transcribe:"}),  # 11 ok, URL
    ]
    path = tmp_path / "m.jsonl"
    _write_lines(path, lines)
    entries, problems = read_manifest(path, "asr")
    assert [e.id for e in entries] == ["a", "e", "f"]
    assert entries[0].audio == str(tmp_path / "clips" / "a.wav")
    assert entries[1].audio == "/abs/e.wav" and entries[2].audio == "https://host/f.wav"
    assert entries[2].prompt == "Transcribe:"
    assert [(p.line, p.id) for p in problems] == [
        (2, None),
        (3, None),
        (4, "b"),
        (5, "c"),
        (6, "a"),
        (8, None),
        (9, "d"),
    ]
    assert "rename it to 'reference'" in problems[2].message and "m.jsonl line 4" in problems[2].message
    assert "already used on line 1" in problems[4].message


def test_manifest_task_specific_fields(tmp_path):
    base = {"audio": "a.wav", "source": "s", "language": "en"}
    path = tmp_path / "m.jsonl"
    _write_lines(
        path,
        [
            json.dumps({"id": "1", **base, "reference": "Hallo"}),
            json.dumps({"id": "2", **base, "reference": "Hallo", "target_language": "de"}),
        ],
    )
    entries, problems = read_manifest(path, "s2tt")
    assert [e.id for e in entries] == ["2"] and problems[0].line == 1 and "target_language" in problems[0].message
    _write_lines(
        path,
        [
            json.dumps({"id": "1", **base, "reference": ["a cat", "a kitten"]}),
            json.dumps({"id": "2", **base, "reference": []}),
        ],
    )
    entries, problems = read_manifest(path, "caption")
    assert entries[0].reference == ("a cat", "a kitten") and [p.line for p in problems] == [2]
    with pytest.raises(DataError, match="must be a string for asr"):  # a list is not an ASR reference
        read_manifest(path, "asr")
    _write_lines(path, [json.dumps({"id": "1", **base, "reference": "yes"})])
    with pytest.raises(DataError, match="no usable manifest line"):
        read_manifest(path, "aqa")  # aqa needs "question"


def test_manifest_missing_or_empty_file_raises(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl", "asr")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no usable"):
        read_manifest(tmp_path / "empty.jsonl", "asr")
    with pytest.raises(ConfigError):
        read_manifest(tmp_path / "empty.jsonl", "dictation")


def test_read_predictions_tolerant(tmp_path):
    path = tmp_path / "out.jsonl"
    _write_lines(
        path,
        [
            json.dumps({"id": "a", "text": "hello", "token_ids": [1], "finish_reason": "stop", "error": None}),
            json.dumps({"id": "b", "text": None, "token_ids": [], "finish_reason": None, "error": "generation failed"}),
            "{broken",
            json.dumps({"text": "no id"}),
            json.dumps({"id": "a", "text": "again", "error": None}),
            json.dumps({"id": "c", "error": None}),
        ],
    )
    preds = read_predictions(path)
    assert dict(preds) == {"a": "hello", "b": None}
    assert [(p.line, p.id) for p in preds.problems] == [(3, None), (4, None), (5, "a"), (6, "c")]
    r = score_predictions("asr", [E("a", "hello"), E("b", "world")], preds)
    assert r.missing == ["b"] and len(r.prediction_problems) == 4 and r.overall["wer"] == 0.5


# ---- output files ----------------------------------------------------------------------------------------------
def test_metrics_json_and_errors_jsonl(tmp_path):
    entries = [E("a", "good day", "s1"), E("b", "sunny", "s1"), E("c", "rain", "s2")]
    r = score_predictions("asr", entries, {"a": "good day", "b": "funny"}, problems=[])
    write_outputs(r, tmp_path / "out")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["task"] == "asr" and m["variant"] == "qwen2_audio"
    assert m["overall"] == {"count": 3, "wer": 0.5}  # (0 + 1 + 1) / (2 + 1 + 1)
    assert m["sources"] == {"s1": {"count": 2, "wer": 1 / 3}, "s2": {"count": 1, "wer": 1.0}}
    assert m["missing"] == {"count": 1, "ids": ["c"]}
    assert set(m["normalizer"]) == {"en"} and m["problems"]["manifest"]["count"] == 0
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["b", "c"]  # the perfect one is not listed
    assert errors[0]["substitutions"] == 1 and errors[1]["missing"] is True
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporary file

    table = format_table(r)
    assert "s1" in table and "33.33%" in table and "50.00%" in table and "missing predictions: 1" in table
