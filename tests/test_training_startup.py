"""Training start-up validates from what is cheap: a wav / flac clip's 16 kHz length comes from its header (no
decode, no log-mel), examples are validated on a thread pool, and the result equals the full decode's.

The reference for every number here is the loader itself (`load_audio` / `load_audio_v1`, each tested against
its own oracle: librosa and the ffmpeg binary) and the full `prepare_completions` path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax.audio.load import load_audio
from qwen_audio_jax.audio.load_v1 import load_audio_v1
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.training.data import clip_samples_16k, read_examples, validate_examples
from tests._requests import synth_clip
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer, qwen_v1_tok_dir, qwen_v1_tokenizer  # noqa: F401

RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup")
    rng = np.random.default_rng(0)
    for rate in RATES:
        for k, n in enumerate((rate // 3 + int(rng.integers(0, 997)), 2 * rate + 7)):
            x = 0.1 * rng.standard_normal(n).astype(np.float32)
            ext, subtype = (".flac", "PCM_24") if k else (".wav", "PCM_16")
            sf.write(d / f"c{rate}_{k}{ext}", np.stack([x, x], 1) if rate == 44100 else x, rate, subtype=subtype)
    return d


def test_header_lengths_equal_the_decoded_lengths(clip_dir):
    for path in sorted(clip_dir.iterdir()):
        assert clip_samples_16k(path, v1=False) == len(load_audio(path)), path.name
        assert clip_samples_16k(path, v1=True) == len(load_audio_v1(path)), path.name


def _write_set(d, paths, v1: bool):
    lines = []
    for i, p in enumerate(paths):
        if v1:
            rec = {"id": f"r{i}", "prompt": f"<audio>{p}</audio>What is it?", "chosen": "A hum.", "rejected": "Rain."}
        elif i % 2:
            rec = {"id": f"r{i}", "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Caption:", "audio": [p.name]}
            rec |= {"chosen": " A hum.", "rejected": " Rain falling."}
        else:
            content = [{"type": "audio", "audio": p.name}, {"type": "text", "text": f"Sound {i}?"}]
            rec = {"id": f"r{i}", "messages": [{"role": "user", "content": content}]}
            rec |= {"chosen": "A hum" + " very" * i, "rejected": "Birds."}
        lines.append(json.dumps(rec))
    (d / "data.jsonl").write_text("\n".join(lines) + "\n")
    return d / "data.jsonl"


@pytest.mark.parametrize("v1", [False, True], ids=["qwen2_audio", "v1"])
def test_cheap_validation_equals_the_full_decode(clip_dir, tmp_path, v1, qwen2_tokenizer, qwen_v1_tokenizer):  # noqa: F811
    """Same kept pairs (token ids, mel lengths, completion masks) and the same report, with an mp3 (decoded), a
    corrupt wav, a missing file and a too-long example in the mix."""
    paths = sorted(clip_dir.iterdir())
    mp3 = tmp_path / "a.mp3"
    sf.write(mp3, synth_clip(0.8, 2), 24000, format="MP3")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio" * 4)
    for p in paths:
        (tmp_path / p.name).symlink_to(p)
    paths = [tmp_path / p.name for p in paths] + [mp3, bad, tmp_path / "missing.wav"]
    data = _write_set(tmp_path, paths, v1)
    processor = Processor(qwen_v1_tokenizer if v1 else qwen2_tokenizer)
    examples, bad_records = read_examples(data, preference=True)
    max_length = 55  # the 2 s clips (50 audio tokens) plus their text run over it
    full, full_report = validate_examples(examples, processor, max_length, bad_records=bad_records, workers=1)
    cheap, cheap_report = validate_examples(examples, processor, max_length, bad_records=bad_records, keep_mels=False)
    assert cheap_report.to_dict() == full_report.to_dict()
    assert full_report.unreadable_audio == 2 and full_report.too_long > 0 and full_report.kept > 4
    assert [p.id for p in cheap] == [p.id for p in full]
    for a, b in zip(cheap, full):
        for x, y in ((a.chosen, b.chosen), (a.rejected, b.rejected)):
            assert (x.token_ids, x.mel_lengths, x.completion_mask) == (y.token_ids, y.mel_lengths, y.completion_mask)
            assert x.mels == [] and len(y.mels) == len(y.mel_lengths)


def test_wav_and_flac_are_not_decoded(clip_dir, tmp_path, monkeypatch, qwen2_tokenizer):  # noqa: F811
    import qwen_audio_jax.audio.clips as clips_module
    import qwen_audio_jax.training.stand_in as stand_in_module

    def no_decode(path, *limit):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(clips_module, "load_audio_start", no_decode)  # the processor's file loader
    monkeypatch.setattr(stand_in_module, "load_audio_start", no_decode)  # a length the header cannot give
    data = _write_set(clip_dir, sorted(p for p in clip_dir.iterdir() if p.suffix in (".wav", ".flac")), v1=False)
    examples, _ = read_examples(data, preference=True)
    pairs, report = validate_examples(examples, Processor(qwen2_tokenizer), 4096, keep_mels=False)
    assert report.kept == len(examples) == len(pairs) == 2 * len(RATES)
