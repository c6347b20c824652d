"""`qwen-audio-jax serve` end to end with the real `openai` client, against one server process started here on a tiny
random-weight model (module-scoped: it compiles once). Every greedy text is compared with what `generate` (the jobs
path, api.generate) gives for the same request and the same audio file, never with values recorded from the server.

The server is started with the README's `serve` command (in a workspace holding the files it names) plus the test's
flags, and the README's curl and `openai` examples of its Serving section run against it (the server's URL in place
of http://127.0.0.1:8000; the `py` blocks are this test's, tests/test_readme.py runs the `python` ones).
The last test sends SIGTERM to the shared server (a drain), so it stays the last one of this file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import httpx
import pytest
import soundfile as sf

from qwen_audio_jax import api
from qwen_audio_jax.generation.engine import EngineOptions
from qwen_audio_jax.generation.options import GenerationOptions
from tests import _oracles
from tests._model_dirs import build_tiny_model_dir
from tests._paths import REPO
from tests._requests import synth_clip
from tests._server import MediaServer

openai = _oracles.require("openai", "the OpenAI client the server is tested with (the test extra)")

KEY = "test-key"
NAME = "qwen2-audio-7b-instruct"  # the README's model (a tiny random one here)
README_URL = "http://127.0.0.1:8000"
SLOTS, MAX_LEN = 8, 512
NEW = 12  # max_tokens of most requests


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = build_tiny_model_dir(root / "models" / NAME)
    clips = root / "clips"
    clips.mkdir()
    sf.write(clips / "glass.wav", synth_clip(2.0, 1), 16000)
    sf.write(clips / "speech.flac", synth_clip(3.0, 2), 16000)
    paths = []
    for i, seconds in enumerate((1.3, 2.6, 0.7)):
        paths.append(clips / f"clip{i}.wav")
        sf.write(paths[-1], synth_clip(seconds, seed=i), 16000)
    sf.write(root / "long.wav", synth_clip(11.0, seed=9), 16000)
    (root / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all" * 4)
    log = open(root / "server.log", "w+")
    [readme_serve] = [c for c in _readme_blocks("bash") if c.startswith("qwen-audio-jax serve ")]
    command = [sys.executable, "-m", "qwen_audio_jax.cli.main", *shlex.split(readme_serve)[1:], "--port", "0"]
    command += ["--batch-size", str(SLOTS), "--max-len", str(MAX_LEN), "--api-key", KEY, "--no-progress"]
    command += ["--max-audio-seconds", "10", "--max-audio-clips", "3", "--max-body-bytes", "2000000"]
    command += ["--allowed-local-media-path", str(clips), "--drain-seconds", "60"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=root)
    url = None
    deadline = time.monotonic() + 600
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        log.seek(0)
        for line in log.read().splitlines():
            if line.startswith("ready: "):
                url = line.split()[1]
    if url is None:
        proc.kill()
        log.seek(0)
        pytest.fail(f"the server did not get ready:\n{log.read()[-3000:]}")
    model = api.load(model_dir)
    yield {"url": url, "proc": proc, "clips": paths, "root": root, "model": model, "log": log}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _readme_blocks(lang: str) -> list[str]:
    """The README Serving section's `lang` blocks (bash: one command a line, continuations joined)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Serving\n") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(rf"```{lang}\n(.*?)```", section, re.DOTALL)
    if lang == "bash":
        return [line for b in blocks for line in b.replace("\\\n", " ").splitlines() if line.strip()]
    return blocks


def _client(served, **kw):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, **kw)


def _b64(path) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def _generate(served, requests: list[dict], max_new: int = NEW) -> list[str]:
    """`generate`'s texts (the jobs path), greedy, for requests in the request-line format."""
    opts = EngineOptions(batch_size=SLOTS, max_len=MAX_LEN)
    out = api.generate(served["model"], requests, GenerationOptions(max_new_tokens=max_new), engine_options=opts)
    assert all(r["error"] is None for r in out), out
    return [r["text"] for r in out]


def _line(rid, path, text):
    return {"id": rid, "messages": [{"role": "user", "content": [{"type": "audio", "audio": str(path)}, text]}]}


def _audio_part(path, how: str) -> dict:
    if how == "input_audio":
        return {"type": "input_audio", "input_audio": {"data": _b64(path), "format": "wav"}}
    if how == "data_url":
        return {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{_b64(path)}"}}
    return {"type": "audio_url", "audio_url": {"url": f"file://{path}"}}


def test_health_models_and_the_key(served):
    assert httpx.get(served["url"] + "/health").json() == {"status": "ok"}
    models = _client(served).models.list()
    assert [m.id for m in models.data] == [NAME]
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=served["url"] + "/v1", api_key="wrong", max_retries=0).models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"


def test_chat_equals_generate_plain_and_streamed(served):
    """input_audio, a data URL and a file:// URL, each the greedy text of `generate` for the same file; the stream
    concatenates to it and ends with the finish chunk and a usage chunk."""
    clip0, clip1, _ = served["clips"]
    text = {"type": "text", "text": "What is this sound?"}
    want = _generate(served, [_line("a", clip0, text), _line("b", clip1, text)])
    client = _client(served)
    for how in ("input_audio", "data_url", "file"):
        for path, expected in ((clip0, want[0]), (clip1, want[1])):
            messages = [{"role": "user", "content": [_audio_part(path, how), text]}]
            reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=NEW)
            assert reply.choices[0].message.content == expected, how
            assert reply.usage.completion_tokens == NEW and reply.choices[0].finish_reason == "length"
    messages = [{"role": "user", "content": [_audio_part(clip1, "input_audio"), text]}]
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=messages, max_tokens=NEW, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want[1]
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == NEW and chunks[-1].usage.prompt_tokens > 0


def test_multi_turn_two_clips_logprobs_and_stop(served):
    clip0, clip1, clip2 = served["clips"]
    turns = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio", "audio": str(clip0)}, {"type": "text", "text": "Hi."}]},
        {"role": "assistant", "content": "Hello."},
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": str(clip1)},
                {"type": "audio", "audio": str(clip2)},
                {"type": "text", "text": "Compare them."},
            ],
        },
    ]
    [want] = _generate(served, [{"id": "m", "messages": turns}])
    sent = json.loads(json.dumps(turns))
    for turn in sent:
        if isinstance(turn["content"], list):
            turn["content"] = [
                _audio_part(p["audio"], "input_audio") if p["type"] == "audio" else p for p in turn["content"]
            ]
    reply = _client(served).chat.completions.create(
        model=NAME, messages=sent, max_tokens=NEW, logprobs=True, top_logprobs=3
    )
    assert reply.choices[0].message.content == want
    entries = reply.choices[0].logprobs.content
    assert len(entries) == NEW and all(e.logprob <= 0 for e in entries)
    for e in entries:  # greedy: the chosen token is the first of its three alternatives (tests/test_top_logprobs.py)
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-5)
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
    stop = next(want[i : i + 3] for i in range(len(want) // 2, len(want) - 2) if want[i : i + 3].strip())
    cut = _client(served).chat.completions.create(model=NAME, messages=sent, max_tokens=NEW, stop=[stop])
    assert cut.choices[0].message.content == want[: want.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_transcriptions_and_translations_equal_the_task_presets(served):
    clip = served["clips"][1]
    want = _generate(
        served,
        [{"id": "t", "task": "asr", "audio": str(clip)}, {"id": "s", "task": "s2tt", "audio": str(clip)}],
        max_new=256,
    )
    client = _client(served)
    with open(clip, "rb") as f:
        assert client.audio.transcriptions.create(model=NAME, file=f).text == want[0]
    with open(clip, "rb") as f:
        assert client.audio.translations.create(model=NAME, file=f).text == want[1]
    with open(clip, "rb") as f:
        verbose = client.audio.transcriptions.create(model=NAME, file=f, response_format="verbose_json")
    assert verbose.text == want[0] and abs(verbose.duration - 2.6) < 0.01
    with open(clip, "rb") as f:
        plain = client.audio.transcriptions.create(model=NAME, file=f, response_format="text")
    assert plain == want[0]


def _post(served, path, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(served["url"] + path, headers={**headers, **kw.pop("headers", {})}, timeout=120, **kw)


def test_errors_are_openai_json_with_their_status(served):
    root, clip0 = served["root"], served["clips"][0]
    media = MediaServer(clip0.parent)  # without --allow-url-fetch, nothing is fetched from it

    def chat(content, **extra):
        return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}

    audio = _audio_part(clip0, "input_audio")
    cases = [
        ("malformed JSON", 400, "invalid_json", {"content": b"{not json"}),
        ("unknown field", 400, "unknown_parameter", {"json": chat("hi", colour="red")}),
        (
            "bad base64",
            400,
            "invalid_base64",
            {"json": chat([{"type": "input_audio", "input_audio": {"data": "@@", "format": "wav"}}])},
        ),
        ("undecodable audio", 400, "invalid_audio", {"json": chat([_audio_part(root / "junk.wav", "input_audio")])}),
        ("too many clips", 400, None, {"json": chat([audio] * 4)}),
        ("too long audio", 400, "audio_too_long", {"json": chat([_audio_part(root / "long.wav", "input_audio")])}),
        ("over the context", 400, "context_length_exceeded", {"json": chat([audio], max_tokens=MAX_LEN - 20)}),
        ("n > 1", 400, None, {"json": chat("hi", n=2)}),
        ("top_logprobs without logprobs", 400, None, {"json": chat("hi", top_logprobs=2)}),
        ("file:// outside the allowed dir", 400, None, {"json": chat([_audio_part(root / "long.wav", "file")])}),
        (
            "http fetching off",
            400,
            None,
            {"json": chat([{"type": "audio_url", "audio_url": {"url": media.url("clip0.wav")}}])},
        ),
        ("image part", 400, None, {"json": chat([{"type": "image_url", "image_url": {"url": "x"}}])}),
        ("unknown model", 404, "model_not_found", {"json": {**chat("hi"), "model": "gpt-4o"}}),
        (
            "body too large",
            413,
            "request_too_large",
            {"content": b"x" * 2_100_000, "headers": {"content-type": "application/json"}},
        ),
    ]
    for what, status, code, kw in cases:
        r = _post(served, "/v1/chat/completions", **kw)
        assert r.status_code == status, (what, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], (what, err)
        if code is not None:
            assert err["code"] == code, (what, err)
    assert media.count() == 0
    media.close()
    r = _post(served, "/v1/chat/completions", key=None, json=chat("hi"))
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(served["url"] + "/v1/nothing").json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):  # the client raises its typed error on our JSON
        _client(served).chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], top_logprobs=21, logprobs=True
        )
    # None of it disturbed the engine.
    r = _client(served).chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": [audio]}], max_tokens=3
    )
    assert r.choices[0].finish_reason == "length"


def test_32_concurrent_streams_each_get_their_single_request_answer(served):
    clips = served["clips"]
    jobs = [(clips[i % 3], f"Question {i}: what do you hear?", 4 + i % 13) for i in range(32)]
    want = {}
    for budget in sorted({n for _, _, n in jobs}):
        mine = [i for i, j in enumerate(jobs) if j[2] == budget]
        texts = _generate(
            served, [_line(str(i), jobs[i][0], {"type": "text", "text": jobs[i][1]}) for i in mine], budget
        )
        want.update(zip(mine, texts))

    async def one(client, i):
        path, text, budget = jobs[i]
        messages = [{"role": "user", "content": [_audio_part(path, "input_audio"), {"type": "text", "text": text}]}]
        stream = await client.chat.completions.create(model=NAME, messages=messages, max_tokens=budget, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def all_of_them():
        async with openai.AsyncOpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=600) as c:
            return await asyncio.gather(*(one(c, i) for i in range(32)))

    got = asyncio.run(all_of_them())
    for i in range(32):
        assert got[i] == want[i], i


def _metric(served, name: str) -> float:
    for line in httpx.get(served["url"] + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_disconnect_mid_stream_frees_the_slot(served):
    clip = served["clips"][0]
    body = {"model": NAME, "messages": [{"role": "user", "content": [_audio_part(clip, "input_audio")]}]}
    body.update(max_tokens=MAX_LEN - 120, stream=True)
    cancelled = _metric(served, "qwen_audio_jax_cancelled_requests_total")
    with httpx.stream(
        "POST", served["url"] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content": ""' not in line:  # the first token's text arrived
                break
    deadline = time.monotonic() + 120  # the engine drops it at its next round; never a timing assertion
    while _metric(served, "qwen_audio_jax_slots_in_use") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(served, "qwen_audio_jax_slots_in_use") == 0
    # The engine dropped it (it did not run out its 392-token budget first: a disconnect is seen within a round).
    assert _metric(served, "qwen_audio_jax_cancelled_requests_total") == cancelled + 1
    [want] = _generate(served, [_line("x", clip, {"type": "text", "text": "Again?"})])
    messages = [{"role": "user", "content": [_audio_part(clip, "input_audio"), {"type": "text", "text": "Again?"}]}]
    assert (
        _client(served)
        .chat.completions.create(model=NAME, messages=messages, max_tokens=NEW)
        .choices[0]
        .message.content
        == want
    )
    text = httpx.get(served["url"] + "/metrics").text
    for name in (
        "requests_total",
        "time_to_first_token_seconds_bucket",
        "inter_token_latency_seconds_bucket",
        "queue_depth",
    ):
        assert f"qwen_audio_jax_{name}" in text, name


def test_readme_serving_examples_run_against_the_server(served, monkeypatch):
    root, url = served["root"], served["url"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("QWEN_AUDIO_JAX_API_KEY", KEY)
    glass, speech = root / "clips" / "glass.wav", root / "clips" / "speech.flac"
    [chat] = _generate(served, [_line("g", glass, {"type": "text", "text": "What is this sound?"})], 32)
    [asr] = _generate(served, [{"id": "s", "task": "asr", "audio": str(speech), "lang": "en"}], 256)
    [curl] = [c for c in _readme_blocks("bash") if c.startswith("curl ")]
    done = subprocess.run(["bash", "-c", curl.replace(README_URL, url)], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == chat
    outputs = []
    for code in _readme_blocks("py"):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(code.replace(README_URL, url), "README.md py block", "exec"), {"__name__": "__readme__"})
        outputs.append(buffer.getvalue())
    assert outputs == [chat, asr + "\n"]


def test_sigterm_drains_and_exits_0(served):
    """Last: SIGTERM while a stream is running; the stream still finishes, then the server exits 0."""
    clip = served["clips"][2]
    messages = [{"role": "user", "content": [_audio_part(clip, "input_audio"), {"type": "text", "text": "Drain?"}]}]
    [want] = _generate(served, [_line("d", clip, {"type": "text", "text": "Drain?"})], max_new=64)
    stream = _client(served, timeout=600).chat.completions.create(
        model=NAME, messages=messages, max_tokens=64, stream=True
    )
    chunks = [next(stream)]
    os.kill(served["proc"].pid, signal.SIGTERM)
    chunks += list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].choices[0].finish_reason == "length"
    assert served["proc"].wait(timeout=300) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(served["url"] + "/health")
