"""Bounded resources (issue 24): a small hostile input never costs gigabytes. Measured before the fix: one 100 MB
prompt line cost 12.9 GB (tokenized before any length check), a 2 MB FLAC of 10 hours of silence 3.4 GB (decoded
whole to keep 30 s), a million-line request file 1.7 GB (held whole). Now a line is read up to a limit and a longer
one is its own error, a text is measured against its token budget before it is tokenized, a file is decoded only as
far as the long-audio policy keeps, and request files are streamed (training data indexed). Each class is measured
here as a subprocess's peak RSS on a large input, against a bound the old code exceeds several times over, function
by function and then for every command (generate, score, eval, sft)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax.audio.clips import CLIP_TOKENS, Silence, file_clips, kept_samples, policy_clips
from qwen_audio_jax.audio.load import MAX_SAMPLES, SAMPLE_RATE, LongAudioWarning, load_audio, load_audio_start
from qwen_audio_jax.audio.load_v1 import load_audio_v1, load_audio_v1_start
from qwen_audio_jax.demo.bundle import DEMO_CLIPS, DEMO_MODEL
from qwen_audio_jax.errors import AudioError, DataError
from qwen_audio_jax.jobs.records import RequestFile
from qwen_audio_jax.jsonl import MAX_LINE_BYTES, iter_lines
from qwen_audio_jax.text.budget import TooLongError
from qwen_audio_jax.text.processor import Processor
from qwen_audio_jax.training.data import read_examples, validate_examples
from qwen_audio_jax.training.data_file import ExampleFile, validate_file
from qwen_audio_jax.training.fingerprint import pair_fingerprint
from tests._paths import FIXTURE_AUDIO, REPO, fixture_clips, require_shared
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer, qwen_v1_tok_dir, qwen_v1_tokenizer  # noqa: F401

MB = 2**20
# The wrapper runs a command and reports its peak resident memory (kB on Linux) as the last stderr line.
_PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def _measured(args: list[str], cwd=REPO, timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `args` in a subprocess; (its result, its peak RSS in MiB)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )
    *rest, last = proc.stderr.splitlines() or [""]
    assert last.startswith("peak-rss-kb"), proc.stderr[-3000:]
    proc.stderr = "\n".join(rest)
    return proc, int(last.split()[1]) / 1024


def _python_peak(code: str, cwd=REPO) -> tuple[str, float]:
    """(stdout, peak MiB) of `python -c code`; fails the test on a non-zero exit."""
    proc, peak = _measured([sys.executable, "-c", code], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, peak


def _silence_flac(path, hours: float) -> None:
    """Hours of 16 kHz silence as FLAC: about 190 kB an hour (a 10-hour file is 1.9 MB)."""
    block = np.zeros(SAMPLE_RATE * 600, np.int16)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        for _ in range(round(hours * 6)):
            f.write(block)


@pytest.fixture(scope="module")
def silence_10h(tmp_path_factory):
    path = tmp_path_factory.mktemp("silence") / "silence_10h.flac"
    _silence_flac(path, 10)
    return path


@pytest.fixture(scope="module")
def clip_40s(tmp_path_factory):
    """An ordinary long clip: its first 30 s use the same programs (encoder and length buckets) as the 10-hour
    file's, so a run with it is the fair baseline for one with the 10-hour file."""
    path = tmp_path_factory.mktemp("clip40") / "clip_40s.flac"
    sf.write(path, np.zeros(40 * SAMPLE_RATE, np.int16), SAMPLE_RATE)
    return path


# ---- 1. one line: the reader's limit, and texts measured before they are tokenized -------------------------------
def test_an_over_long_line_is_that_lines_error_and_is_never_held_whole(tmp_path):
    path = tmp_path / "req.jsonl"
    huge = 160 * MB  # read whole, decoded and parsed, this line alone cost 813 MiB (measured)
    with open(path, "w") as f:
        f.write('{"id": "a", "prompt": "x"}\n{"id": "huge", "prompt": "')
        for _ in range(huge // MB):
            f.write("x" * MB)
        f.write('"}\n{"id": "b", "prompt": "y"}\n')
    lines = list(iter_lines(path))
    assert [(x.number, x.error is None) for x in lines] == [(1, True), (2, False), (3, True)]
    assert "over the 64 MiB limit for one line" in lines[1].error and lines[1].error.startswith("req.jsonl line 2:")
    assert lines[1].size == huge + len('{"id": "huge", "prompt": ""}\n')
    assert lines[2].value == {"id": "b", "prompt": "y"}
    assert [r.id for r in RequestFile(path)] == ["a", "line-2", "b"]
    code = f"from qwen_audio_jax.jsonl import iter_lines; print(sum(1 for _ in iter_lines({str(path)!r})))"
    out, peak = _python_peak(code)
    assert out.split() == ["3"] and peak < 250, f"reading the file took {peak:.0f} MiB"  # one limit's worth (142)


TEXTS = {
    "ascii words": "hello world, this is a test. " * 300,
    "a run of spaces": " " * 20_000,  # Qwen's longest tokens: 128 bytes of spaces
    "a run of dashes": "-" * 20_000,
    "digits": "1234567890" * 1000,
    "precomposed accents": "é" * 3000,
    "decomposed accents": "e\u0301" * 3000,  # NFC composes them: fewer bytes than written
    "hangul jamo": "\u1100\u1161\u11a8" * 2000,  # NFC: 9 bytes -> one 3-byte syllable
    "cjk": "中文的文字" * 1000,
    "emoji": "😀🎵" * 2000,
    "special tokens": "<|im_start|><|AUDIO|><|audio_bos|>" * 500,
    "mixed": "Ünïcödé <|AUDIO|> \t\n\n  — 数字 123 😀 " * 500,
}


@pytest.mark.parametrize("name", list(TEXTS))
def test_min_tokens_is_a_lower_bound(qwen2_tokenizer, qwen_v1_tokenizer, name):  # noqa: F811
    text = TEXTS[name]
    for tok in (qwen2_tokenizer, qwen_v1_tokenizer):
        n = len(tok.encode(text))
        assert tok.min_tokens([text]) <= n
        half = len(text) // 2  # a text written in two parts (chat turns) is bounded by the whole
        assert tok.min_tokens([text[:half], text[half:]]) <= n


def _requests(form: str, text: str) -> dict:
    if form == "prompt":
        return {"prompt": text}
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}


@pytest.mark.parametrize("form", ["prompt", "messages"])
@pytest.mark.parametrize("where", ["prompt", "completion"])
def test_a_text_that_cannot_fit_is_refused_before_it_is_tokenized(qwen2_tokenizer, monkeypatch, form, where):  # noqa: F811
    processor = Processor(qwen2_tokenizer, max_tokens=4096)
    encoded: list[int] = []
    original = qwen2_tokenizer.encode
    monkeypatch.setattr(qwen2_tokenizer, "encode", lambda text: encoded.append(len(text)) or original(text))
    long = "hello " * 200_000  # 1.2 MB: at least 9,375 tokens with Qwen's 128-byte longest token
    short = "hello"
    request = _requests(form, long if where == "prompt" else short)
    with pytest.raises(TooLongError, match=r"at least [\d,]+ tokens, more than the 4,096 tokens"):
        processor.prepare_completions(request, [long if where == "completion" else short])
    with pytest.raises(TooLongError):
        processor.prepare({**request, "completion": long if where == "completion" else short})
    assert encoded == []  # refused without tokenizing anything
    processor.prepare_completions(_requests(form, "hello " * 500), ["fine"])  # what fits is prepared as before
    assert encoded


def test_a_v1_history_turn_that_cannot_fit_is_dropped_untokenized(qwen_v1_tokenizer, monkeypatch):  # noqa: F811
    """Qwen-Audio's make_context keeps history turns newest first while they fit its window and drops the rest; a
    turn whose length alone says it cannot fit is dropped before it is tokenized, with the same result."""
    processor = Processor(qwen_v1_tokenizer, max_tokens=8192)
    huge = "hello " * 200_000
    turns = [{"role": "user", "content": huge}, {"role": "assistant", "content": "ok"}]
    recent = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    query = [{"role": "user", "content": "And now?"}]
    want = processor.prepare_messages(recent + query)
    encoded: list[int] = []
    original = qwen_v1_tokenizer.encode

    def spy(text, **kw):
        encoded.append(len(text))
        return original(text, **kw)

    monkeypatch.setattr(qwen_v1_tokenizer, "encode", spy)
    got = processor.prepare_messages(turns + recent + query)
    assert got.token_ids == want.token_ids and max(encoded) < 1000
    with pytest.raises(TooLongError):  # the query itself is always kept: it must fit
        processor.prepare_messages(recent + [{"role": "user", "content": huge}])
    assert max(encoded) < 1000


# ---- 2. audio: a file is decoded no further than the long-audio policy keeps --------------------------------------
@pytest.mark.parametrize("v1", [False, True], ids=["qwen2-audio", "v1"])
@pytest.mark.parametrize("policy", ["truncate", "chunk"])
def test_ten_hours_of_silence_cost_what_the_policy_keeps(silence_10h, v1, policy):
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from qwen_audio_jax.audio.clips import file_clips\n"
        "from qwen_audio_jax.errors import AudioError\n"
        f"try:\n    print(len(file_clips({str(silence_10h)!r}, {policy!r}, v1={v1}, max_tokens=8192)))\n"
        "except AudioError as e:\n    print('refused', e)\n"
    )
    out, peak = _python_peak(code)
    # Decoded whole, the file is 576 M samples: 2.3 GB of float32 (3.4 GB measured), 1.15 GB as int16 for v1.
    assert peak < 300, f"{peak:.0f} MiB"
    if policy == "truncate":
        assert out.split() == ["1"]
    else:  # 8192 tokens hold ten 30 s clips; the eleventh is refused as soon as it is decoded
        assert out.startswith("refused") and "36000.0 s long" in out and "8192 tokens" in out, out


def _synthetic(tmp_path, rate: int, seconds: float, channels: int, fmt: str):
    rng = np.random.default_rng(rate + channels)
    path = tmp_path / f"noise_{rate}_{channels}.{fmt}"
    data = (0.1 * rng.standard_normal((int(rate * seconds), channels))).astype(np.float32)
    sf.write(path, data, rate, subtype="PCM_16")
    return path


CAPS = [SAMPLE_RATE, MAX_SAMPLES, 2 * MAX_SAMPLES]


RATES = [(8000, 1, "wav"), (22050, 2, "flac"), (44100, 1, "wav"), (48000, 2, "flac"), (16000, 1, "wav")]


@pytest.mark.parametrize("rate, channels, fmt", RATES)
def test_bounded_decoding_keeps_the_samples_of_the_whole_file(tmp_path, rate, channels, fmt):
    path = _synthetic(tmp_path, rate, 70.0, channels, fmt)
    for loader, start in ((load_audio, load_audio_start), (load_audio_v1, load_audio_v1_start)):
        whole = loader(path)
        for cap in CAPS:
            got = start(path, cap)
            np.testing.assert_array_equal(got.wav[:cap], whole[:cap])
            assert len(got.wav) > cap and got.seconds == pytest.approx(70.0, abs=0.01)


@pytest.mark.parametrize("path", fixture_clips() or ["absent"], ids=lambda p: getattr(p, "name", p))
@pytest.mark.parametrize("policy", ["truncate", "chunk"])
def test_real_clips_give_the_same_clips_as_before(path, policy):
    """Every fixture clip (wav/flac/mp3, 16-48 kHz, the 97 s music clip) through the bounded path gives exactly the
    clips the whole-file path gave, for both loaders and both policies."""
    require_shared(FIXTURE_AUDIO if path == "absent" else path)  # a user's clone without ../shared skips here
    from qwen_audio_jax.audio.load import split_long_audio

    for v1, loader in ((False, load_audio), (True, load_audio_v1)):
        with warnings.catch_warnings(record=True) as before:
            warnings.simplefilter("always")
            want = split_long_audio(loader(path), policy, str(path))
        with warnings.catch_warnings(record=True) as now:
            warnings.simplefilter("always")
            got = file_clips(path, policy, v1=v1, max_tokens=8192)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        assert [str(w.message) for w in now] == [str(w.message) for w in before]


@pytest.mark.parametrize("v1", [False, True], ids=["qwen2-audio", "v1"])
def test_many_files_in_one_request_load_no_more_than_the_budget_holds(
    clip_40s,
    qwen2_tokenizer,  # noqa: F811
    qwen_v1_tokenizer,  # noqa: F811
    monkeypatch,
    v1,
):
    import qwen_audio_jax.audio.clips as clips_module

    loaded = []
    name = "load_audio_v1_start" if v1 else "load_audio_start"
    original = getattr(clips_module, name)
    monkeypatch.setattr(clips_module, name, lambda path, cap: loaded.append(path) or original(path, cap))
    processor = Processor(qwen_v1_tokenizer if v1 else qwen2_tokenizer, max_tokens=4096)
    if v1:
        prompt, audio = "".join(f"<audio>{clip_40s}</audio>" for _ in range(20)) + "What?", None
    else:
        prompt, audio = AUDIO * 20 + "What?", [str(clip_40s)] * 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LongAudioWarning)
        with pytest.raises(TooLongError, match=r"the audio takes more than the 4,096 tokens .* by audio 5\)"):
            processor.prepare_prompt(prompt, audio)
    assert len(loaded) == 4096 // CLIP_TOKENS + 1  # 30 s clips of 752 tokens: the sixth is past the budget


def test_chunk_keeps_what_the_budget_can_hold_and_refuses_more(tmp_path):
    assert kept_samples("truncate", None) == kept_samples("truncate", 10) == MAX_SAMPLES
    assert kept_samples("chunk", None) is None
    assert kept_samples("chunk", 8192) == (8192 // CLIP_TOKENS + 1) * MAX_SAMPLES == 11 * MAX_SAMPLES
    wav = np.zeros(3 * MAX_SAMPLES + 5, np.float32)
    assert len(policy_clips(wav, "chunk", "x", max_tokens=3 * CLIP_TOKENS)) == 4  # judged on its exact tokens later
    with pytest.raises(AudioError, match=r"x is 90.0 s long: .* more than the 1504 tokens .* at most 60 s"):
        policy_clips(wav, "chunk", "x", max_tokens=2 * CLIP_TOKENS)


def test_a_long_stand_in_is_never_made_whole():
    """Training start-up stands a clip in by its length (a header read): 10 hours of it is 30 s of zeros (and one
    sample saying it is longer), with the warning naming the whole length."""
    with pytest.warns(LongAudioWarning, match=r"is 36000.0 s long and was truncated"):
        (clip,) = policy_clips(Silence(36000 * SAMPLE_RATE), "truncate", "s.flac", max_tokens=8192)
    assert clip.shape == (MAX_SAMPLES,) and not clip.any()


# ---- 3. files of many lines: streamed requests, indexed training data ---------------------------------------------
ECHO_JOB = """
import sys
from qwen_audio_jax.jobs.driver import run_file

class Echo:
    name = "echo"
    def prepare(self, record):
        return record.id
    def run(self, stream):
        while not stream.exhausted:
            for rid in stream.take(8):
                yield {"id": rid, "text": rid, "error": None}
    def error_result(self, rid, msg):
        return {"id": rid, "text": None, "error": msg}
    def stats(self):
        return {}
    def warm_up(self, progress):
        pass

run_file(Echo(), sys.argv[1], sys.argv[2], resume="--resume" in sys.argv, ordered=True, progress=False, workers=2)
"""


def _request_lines(n: int) -> str:
    turn = [{"role": "user", "content": [{"type": "text", "text": "Hello there, how are you today?"}]}]
    return "".join(json.dumps({"id": f"r{i:07d}", "messages": turn, "max_new_tokens": 8}) + "\n" for i in range(n))


def test_a_request_file_is_streamed_and_resume_and_order_still_hold(tmp_path):
    n = 300_000
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_text(_request_lines(n))
    small.write_text(_request_lines(10))
    job = tmp_path / "echo.py"
    job.write_text(ECHO_JOB)
    proc, base = _measured([sys.executable, job, small, tmp_path / "small.out"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "big.out"
    proc, peak = _measured([sys.executable, job, big, out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Held whole, these records cost ~550 MiB more than a 10-line file; streamed, the job holds 24 bytes an id.
    assert peak - base < 150, f"{peak:.0f} MiB against {base:.0f} MiB for 10 lines"
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == [f"r{i:07d}" for i in range(n)]  # every request once, in input order (--ordered)
    # Resume after a kill: half the lines and a torn one are kept, the rest is done, each id once, in order.
    text = out.read_text()
    cut = text.index("\n", len(text) // 2) + 1
    out.write_text(text[:cut] + '{"id": "r00')
    proc, _ = _measured([sys.executable, job, big, out, "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ids


def _sft_lines(n: int, clip: str) -> str:
    rec = {"prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Transcribe:", "audio": [clip], "completion": "one two"}
    return "".join(json.dumps({"id": f"e{i}", **rec}) + "\n" for i in range(n))


def test_training_data_is_indexed_not_held(tmp_path):
    clip = str(sorted(DEMO_CLIPS.glob("*.flac"))[0])
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_text(_sft_lines(300_000, clip))
    small.write_text(_sft_lines(10, clip))
    code = "import sys\nfrom qwen_audio_jax.training.data_file import ExampleFile\n"
    code += "print(len(ExampleFile(sys.argv[1], False)))"
    proc, base = _measured([sys.executable, "-c", code, small])
    proc, peak = _measured([sys.executable, "-c", code, big])
    assert proc.returncode == 0 and proc.stdout.split() == ["300000"], proc.stderr[-3000:]
    # Parsed and held (read_examples), 200,000 of these records cost 166 MiB more than 10 (measured); indexed, 32
    # bytes each and, while reading, the ids (the duplicate check): 38 MiB for 200,000.
    assert peak - base < 100, f"{peak:.0f} MiB against {base:.0f} MiB for 10 records"


def test_an_indexed_data_file_validates_as_the_lists_did_and_notices_a_change(tmp_path, qwen2_tokenizer):  # noqa: F811
    clip = str(sorted(DEMO_CLIPS.glob("*.flac"))[0])
    path = tmp_path / "d.jsonl"
    lines = _sft_lines(6, clip).splitlines()
    lines[2] = "not json"
    lines[4] = json.dumps({"id": "long", "prompt": "x " * 200_000, "completion": "y"})  # too long, untokenized
    path.write_text("\n".join(lines) + "\n")
    processor = Processor(qwen2_tokenizer)
    examples, bad = read_examples(path, preference=False)
    pairs, report = validate_examples(examples, processor, 512, bad_records=bad, source=path, keep_mels=False)
    data, report2, fingerprint = validate_file(path, processor, 512, False)
    assert [data[i].id for i in range(len(data))] == [p.id for p in pairs] == ["e0", "e1", "e3", "e5"]
    assert report2.to_dict() == report.to_dict() and fingerprint == pair_fingerprint(pairs)
    assert report.too_long == 1 and report.bad_records == 1
    assert list(ExampleFile(path, False)) == examples
    path.write_text(path.read_text().replace('"one two"', '"one six"'))  # edited under a running job
    with pytest.raises(DataError, match=r"d.jsonl line 1 changed while the run was using it"):
        data[0]


# ---- every command, end to end: a hostile input next to normal ones ----------------------------------------------
HUGE_LINE = MAX_LINE_BYTES + MB  # over the per-line limit
LONG_TEXT = "hello " * 3_000_000  # 18 MB: under the line limit, over any token budget (tokenized: ~2.5 GB)
AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def _chat(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def _write(path, records: list, huge_at: int | None = None) -> None:
    """One JSON object a line; at `huge_at`, a line of HUGE_LINE bytes (written a piece at a time)."""
    with open(path, "w") as f:
        for i, rec in enumerate(records):
            if i == huge_at:
                head = '{"id": "huge", "prompt": "'
                f.write(head)
                left = HUGE_LINE - len(head) - 3
                while left > 0:
                    f.write("x" * min(MB, left))
                    left -= MB
                f.write('"}\n')
            f.write(json.dumps(rec) + "\n")


def _inputs(command: str, tmp_path, silence, clip_40s, hostile: bool):
    """(argv, output) of `command` over normal records (a 40 s clip among them), plus the hostile ones when asked."""
    clip = str(sorted(DEMO_CLIPS.glob("*.flac"))[0])
    long = str(clip_40s)
    out = tmp_path / ("hostile" if hostile else "normal")
    inp = tmp_path / f"{command}-{out.name}.jsonl"
    model = ["--model", DEMO_MODEL]
    if command == "generate":
        normal = [{"id": "ok", "messages": _chat("Hi")}, {"id": "clip", "prompt": AUDIO + "What?", "audio": [clip]}]
        normal += [{"id": "40s", "prompt": AUDIO + "?", "audio": [long]}]
        extra = [{"id": "long", "messages": _chat(LONG_TEXT)}]
        extra += [{"id": "silence", "prompt": AUDIO + "?", "audio": [str(silence)]}]
        argv = ["generate", *model, "--input", inp, "--output", out, "--max-new-tokens", "2"]
    elif command == "score":
        normal = [{"id": "ok", "messages": _chat("Hi"), "completion": "One."}]
        normal += [{"id": "clip", "prompt": AUDIO + "What?", "audio": [clip], "completion": "one"}]
        normal += [{"id": "40s", "prompt": AUDIO + "?", "audio": [long], "completion": "one"}]
        extra = [{"id": "long", "messages": _chat("Hi"), "completion": LONG_TEXT}]
        extra += [{"id": "silence", "prompt": AUDIO + "?", "audio": [str(silence)], "completion": "one"}]
        argv = ["score", *model, "--input", inp, "--output", out]
    elif command == "eval":
        entry = {"reference": "one two", "source": "s", "language": "en"}
        normal = [{"id": "ok", "audio": clip, **entry}, {"id": "40s", "audio": long, **entry}]
        extra = [{"id": "long", "audio": clip, "prompt": LONG_TEXT, **entry}]
        extra += [{"id": "silence", "audio": str(silence), **entry}]
        argv = ["eval", "--task", "asr", "--manifest", inp, *model, "--output", out]
    else:
        rec = {"prompt": AUDIO + "Transcribe:", "completion": "one two"}
        normal = [{"id": f"e{i}", "audio": [clip], **rec} for i in range(4)]
        normal += [{"id": "40s", "audio": [long], **rec}]  # its 757 tokens are over max_length 256
        extra = [{"id": "long", "audio": [clip], **{**rec, "completion": LONG_TEXT}}]
        extra += [{"id": "silence", "audio": [str(silence)], **rec}]
        argv = ["sft", "--config", REPO / "configs" / "sft_sample.yaml", f"model={DEMO_MODEL}", f"data.train={inp}"]
        argv += [f"output_dir={out}", "train.steps=1", "train.batch_size=2", "checkpoint.every=1"]
    _write(inp, normal + (extra if hostile else []), huge_at=1 if hostile else None)
    return [sys.executable, "-m", "qwen_audio_jax.cli.main", *argv, "--no-progress"], out


def _check_hostile(command: str, out, stdout: str, stderr: str) -> None:
    if command in ("generate", "score"):
        results = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert set(results) == {"ok", "clip", "40s", "line-2", "long", "silence"}, results.keys()
        assert all(results[k]["error"] is None for k in ("ok", "clip", "40s"))
        assert "over the 64 MiB limit for one line" in results["line-2"]["error"]
        assert "at least" in results["long"]["error"] and "tokens this request can hold" in results["long"]["error"]
        assert results["silence"]["error"] is None  # its first 30 s, as the reference keeps
    elif command == "eval":
        assert "over the 64 MiB limit for one line" in stdout  # a bad manifest line is a warning
        predictions = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
        assert set(predictions) == {"ok", "40s", "long", "silence"} and predictions["silence"]["error"] is None
        assert "tokens this request can hold" in predictions["long"]["error"]
        assert (out / "metrics.json").is_file()
    else:
        # Start-up stands the 10-hour clip in by its header's length (it was 2.3 GB of zeros): its first 30 s are
        # 757 tokens, over max_length 256, so it is dropped as too long, as the 18 MB text is before it is tokenized.
        report = json.loads((out / "data_report.json").read_text())
        assert report["kept"] == 4 and report["dropped"]["bad_records"] == 1 and report["dropped"]["too_long"] == 3
        assert "at least" in json.dumps(report["samples"]["too_long"])
        assert (out / "model").is_dir()
    assert "silence_10h.flac is 36000.0 s long and was truncated to its first 30 s" in stderr


@pytest.mark.parametrize("command", ["generate", "score", "eval", "sft"])
def test_every_command_stays_bounded_on_hostile_inputs(tmp_path, silence_10h, clip_40s, command):
    """A 65 MiB line, an 18 MB text and a 10-hour file next to normal records: each is that record's own error (or,
    the file, its first 30 s), the normal ones are answered, and the run costs little more than the normal records
    alone. Before: 12.9 GB for the line, ~2.5 GB for the text, 3.4 GB for the file."""
    argv, _ = _inputs(command, tmp_path, silence_10h, clip_40s, hostile=False)
    proc, base = _measured(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    argv, out = _inputs(command, tmp_path, silence_10h, clip_40s, hostile=True)
    proc, peak = _measured(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]
    _check_hostile(command, out, proc.stdout, proc.stderr)
    print(f"{command}: peak RSS {base:.0f} MiB on the normal records, {peak:.0f} MiB with the hostile ones")
    assert peak - base < 600, f"{command}: {peak:.0f} MiB against {base:.0f} MiB without the hostile records"
