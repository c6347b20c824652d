"""The server's limits and its life around them, on a server of its own (tiny random model, 8 slots, a queue of 1
beyond them, http(s) audio URLs fetched from a local HTTP server): fetched audio gives `generate`'s text for the
same file; a full queue answers 503 with OpenAI's error JSON and the requests it holds still finish; a body over
the limit sent without Content-Length (chunked) is a 413; the transcription `prompt` is the instruction the model
gets; a request that arrives while SIGTERM drains is a 503 while the one in flight finishes. The last test ends the
server, so it stays last.

Requests are held exactly where a test needs them, never by timing: an audio URL under /held/ of the local media
server is answered only once the test releases it, so its request stays admitted (being prepared) until then.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import os
import signal
import socket
import sys
import time

import httpx
import pytest
import soundfile as sf

from qwen_audio_jax import api
from qwen_audio_jax.jobs.tasks import AUDIO
from tests import _oracles
from tests._model_dirs import build_tiny_model_dir
from tests._requests import synth_clip
from tests._server import MediaServer, audio_part, generate_results, start_server, stop_server

openai = _oracles.require("openai", "the OpenAI client the server is tested with (the test extra)")

NAME = "tiny"
SLOTS, MAX_LEN, QUEUE = 8, 512, 1  # as tests/test_serve.py (the same programs: the session's cache holds them)
LIMIT = 1_000_000  # --max-body-bytes
NEW = 10
QUESTION = {"type": "text", "text": "What do you hear?"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-limits")
    model_dir = build_tiny_model_dir(root / NAME)
    media = root / "media"
    media.mkdir()
    for i, seconds in enumerate((1.1, 2.3)):
        sf.write(media / f"clip{i}.wav", synth_clip(seconds, seed=10 + i), 16000)
    command = [sys.executable, "-m", "qwen_audio_jax.cli.main", "serve", "--model", str(model_dir), "--port", "0"]
    command += ["--batch-size", str(SLOTS), "--max-len", str(MAX_LEN), "--max-queue", str(QUEUE), "--no-progress"]
    command += ["--workers", str(SLOTS + QUEUE + 1), "--allow-url-fetch", "--max-body-bytes", str(LIMIT)]
    command += ["--drain-seconds", "120"]
    proc, url, log = start_server(command, root, root / "server.log")
    files = MediaServer(media)
    yield {"url": url, "proc": proc, "media": media, "files": files, "model": api.load(model_dir), "log": log}
    files.close()
    stop_server(proc)


def _chat(content, max_tokens=NEW) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def _post(served, body, path="/v1/chat/completions", **kw) -> httpx.Response:
    return httpx.post(served["url"] + path, json=body, timeout=300, **kw)


def _want(served, clip, max_new=NEW, question=QUESTION) -> str:
    line = {"id": "x", "messages": [{"role": "user", "content": [{"type": "audio", "audio": str(clip)}, question]}]}
    return generate_results(served["model"], [line], max_new, SLOTS, MAX_LEN)[0]["text"]


def _url_part(url: str) -> dict:
    return {"type": "audio_url", "audio_url": {"url": url}}


def test_fetched_audio_urls_give_generate_text(served):
    files, clip = served["files"], served["media"] / "clip1.wav"
    r = _post(served, _chat([_url_part(files.url("clip1.wav")), QUESTION]))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == _want(served, clip)
    assert files.count("/clip1.wav") == 1
    missing = _post(served, _chat([_url_part(files.url("absent.wav")), QUESTION]))
    assert missing.status_code == 400 and "cannot fetch" in missing.json()["error"]["message"]
    assert missing.json()["error"]["param"] == "messages[0].content[0]"


def test_a_full_queue_answers_503_and_keeps_what_it_holds(served):
    """SLOTS + QUEUE requests held while they are prepared fill the server; the next is a 503 (OpenAI's JSON,
    through the openai client too); once released, every held request gets its full answer, and the server
    takes requests again."""
    files, clip = served["files"], served["media"] / "clip0.wav"
    held = SLOTS + QUEUE
    body = _chat([_url_part(files.url("clip0.wav", held=True)), QUESTION])
    with futures.ThreadPoolExecutor(held) as pool:
        pending = [pool.submit(_post, served, body) for _ in range(held)]
        assert files.wait_for_hits(held, "/held/"), "the held requests never reached the media server"
        full = _post(served, _chat([audio_part(clip), QUESTION]))
        assert full.status_code == 503, full.text
        err = full.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == "queue_full" and err["type"] == "server_error" and "capacity" in err["message"]
        client = openai.OpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert e.value.status_code == 503 and e.value.body["code"] == "queue_full"
        files.release()
        answers = [p.result() for p in pending]
    want = _want(served, clip)
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want
    assert _post(served, _chat([audio_part(clip), QUESTION])).json()["choices"][0]["message"]["content"] == want
    files.gate.clear()


def _chunked(data: bytes, piece: int = 65536):
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


def test_a_chunked_body_over_the_limit_is_413(served):
    """No Content-Length: the limit is enforced on the bytes as they arrive, for JSON and multipart alike; a
    chunked body under the limit is served as usual."""
    clip = served["media"] / "clip0.wav"
    big = json.dumps(_chat("x" * (LIMIT + 65536))).encode()
    r = httpx.post(
        served["url"] + "/v1/chat/completions",
        content=_chunked(big),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large" and "content-length" not in r.request.headers
    boundary = "qwenaudiojaxboundary"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{NAME}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + b"\0" * (LIMIT + 65536)
    r = httpx.post(
        served["url"] + "/v1/audio/transcriptions",
        content=_chunked(form),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=120,
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"
    small = json.dumps(_chat([audio_part(clip), QUESTION])).encode()
    r = httpx.post(
        served["url"] + "/v1/chat/completions",
        content=_chunked(small, 4096),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == _want(served, clip)


def test_the_transcription_prompt_is_the_instruction(served):
    """`prompt` replaces the preset's instruction: on this base-form model the request is the `generate` line
    with that text after the audio (and with no prompt, the asr preset's)."""
    clip = served["media"] / "clip1.wav"
    prompt = "Describe the audio in French:"
    lines = [
        {"id": "p", "prompt": AUDIO + prompt, "audio": [str(clip)]},
        {"id": "a", "task": "asr", "audio": str(clip)},
    ]
    with_prompt, preset = (r["text"] for r in generate_results(served["model"], lines, 256, SLOTS, MAX_LEN))
    assert with_prompt != preset  # the two instructions lead this model to different texts
    client = openai.OpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0)
    with open(clip, "rb") as f:
        assert client.audio.transcriptions.create(model=NAME, file=f, prompt=prompt).text == with_prompt
    with open(clip, "rb") as f:
        assert client.audio.transcriptions.create(model=NAME, file=f, prompt="").text == preset
    r = httpx.post(
        served["url"] + "/v1/audio/transcriptions",
        files={"file": ("a.wav", clip.read_bytes(), "audio/wav"), "prompt": ("p.txt", b"a file", "text/plain")},
        data={"model": NAME},
        timeout=120,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_requests_during_the_drain_get_503(served):
    """Last (it stops the server). A request held in preparation is in flight when SIGTERM arrives; another one,
    whose headers the server has taken (it answered 100 Continue) and whose body comes after the server stopped
    accepting connections, is refused with a 503; the one in flight still gets its full answer; exit status 0."""
    files, clip, proc = served["files"], served["media"] / "clip1.wav", served["proc"]
    host, port = served["url"].removeprefix("http://").rsplit(":", 1)
    before = files.count("/held/")
    with futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(_post, served, _chat([_url_part(files.url("clip1.wav", held=True)), QUESTION]))
        assert files.wait_for_hits(before + 1, "/held/")
        late = socket.create_connection((host, int(port)), timeout=120)
        body = json.dumps(_chat([audio_part(clip), QUESTION])).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        late.sendall(head.encode())
        assert late.recv(1024).startswith(b"HTTP/1.1 100 ")  # the app is reading this request's body
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the listening socket is closed: the drain has begun
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                break
        else:
            pytest.fail("the server kept accepting connections after SIGTERM")
        late.sendall(body)
        status, answer = _read_response(late)
        late.close()
        assert status == 503 and answer["error"]["code"] == "shutting_down", answer
        assert proc.poll() is None  # still draining: the held request is in flight
        files.release()
        r = in_flight.result()
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == _want(served, clip)
    assert proc.wait(timeout=300) == 0
