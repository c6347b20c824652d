"""The load generator of benchmarks/serve.py: plain httpx clients on one asyncio loop (lighter than the `openai`
client's per-chunk pydantic parsing, which would take CPU from the server on a 2-core machine), the outcome of
every request, and the figures of a phase.

Every request sent ends as exactly one outcome: "ok" (200 and a complete answer: a streamed chat's finish chunk,
usage chunk and `data: [DONE]`; a transcription's JSON text), "error" (the server answered with OpenAI's error
JSON, as a status or inside the stream) or "lost" (anything else: a dropped connection, a timeout, a stream cut
short, a body that is not the API's). A benchmark run counts all three; "lost" must stay 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time

import httpx
import numpy as np


@dataclasses.dataclass(frozen=True)
class Job:
    """One request of the corpus: a streamed chat (input_audio + a question, max_tokens = min_tokens, so it does
    the same work whenever it runs) or a transcription upload."""

    kind: str  # "chat" | "transcription"
    name: str  # the clip's file name
    data: bytes
    fmt: str  # the audio format (file suffix without the dot)
    prompt: str = ""
    max_tokens: int = 0

    def chat_body(self, model: str) -> dict:
        import base64

        audio = {"data": base64.b64encode(self.data).decode(), "format": self.fmt}
        content = [{"type": "input_audio", "input_audio": audio}, {"type": "text", "text": self.prompt}]
        return {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "min_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


@dataclasses.dataclass
class Outcome:
    index: int  # position in the phase's request sequence (the corpus job is index % len(corpus))
    kind: str
    outcome: str = "lost"  # "ok" | "error" | "lost"
    detail: str = ""  # the error code or what went wrong
    text: str = ""
    latency: float = 0.0  # send to the last byte
    ttft: float | None = None  # send to the first content (streamed chats)
    tpot: float | None = None  # (last content - first content) / (tokens - 1) (streamed chats)
    gaps: list = dataclasses.field(default_factory=list)  # between content chunks as they arrived
    tokens: int = 0  # completion tokens (streamed chats, from the usage chunk)


def _error_code(body: bytes) -> str | None:
    try:
        err = json.loads(body)["error"]
        return str(err.get("code") or err.get("type"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def _chat(client: httpx.AsyncClient, body: dict, out: Outcome) -> None:
    t0 = time.perf_counter()
    first = last = None
    texts, finished, done = [], False, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            code = _error_code(await r.aread())
            out.outcome, out.detail = ("error", f"{r.status_code} {code}") if code else ("lost", f"{r.status_code}")
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                out.outcome, out.detail = "error", f"in stream {chunk['error'].get('code')}"
                return
            if chunk.get("usage"):
                out.tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                finished |= choice.get("finish_reason") is not None
                content = choice["delta"].get("content")
                if content:
                    now = time.perf_counter()
                    if last is not None:
                        out.gaps.append(now - last)
                    first, last = first or now, now
                    texts.append(content)
    out.latency = time.perf_counter() - t0
    if not (done and finished and out.tokens):
        out.detail = "stream ended early"
        return
    out.outcome, out.text = "ok", "".join(texts)
    if first is not None:
        out.ttft = first - t0
        if out.tokens > 1 and last > first:
            out.tpot = (last - first) / (out.tokens - 1)


async def _transcription(client: httpx.AsyncClient, job: Job, model: str, out: Outcome) -> None:
    t0 = time.perf_counter()
    files = {"file": (job.name, job.data, f"audio/{job.fmt}")}
    r = await client.post("/v1/audio/transcriptions", files=files, data={"model": model, "language": "en"})
    out.latency = time.perf_counter() - t0
    if r.status_code != 200:
        code = _error_code(r.content)
        out.outcome, out.detail = ("error", f"{r.status_code} {code}") if code else ("lost", f"{r.status_code}")
        return
    out.outcome, out.text = "ok", r.json()["text"]


async def one(client: httpx.AsyncClient, job: Job, body: dict | None, model: str, index: int) -> Outcome:
    out = Outcome(index, job.kind)
    try:
        if job.kind == "chat":
            await _chat(client, body, out)
        else:
            await _transcription(client, job, model, out)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:  # a dropped connection, a malformed answer
        out.outcome, out.detail = "lost", f"{type(e).__name__}: {e}"
    return out


def run_phase(url: str, corpus: list[Job], model: str, clients: int, seconds: float, limit: int | None = None):
    """`clients` clients send the corpus round-robin (request i is corpus[i % len]) until `seconds` have passed
    (or `limit` requests were started); requests in flight then finish. Returns (outcomes in request order,
    wall seconds from the first send to the last answer)."""
    bodies = [job.chat_body(model) if job.kind == "chat" else None for job in corpus]

    async def main():
        counter = itertools.count()
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        timeout = httpx.Timeout(600.0, connect=30.0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
            start = time.perf_counter()

            async def worker():
                got = []
                while time.perf_counter() - start < seconds:
                    i = next(counter)
                    if limit is not None and i >= limit:
                        break
                    job = corpus[i % len(corpus)]
                    got.append(await one(client, job, bodies[i % len(corpus)], model, i))
                return got

            results = await asyncio.gather(*(worker() for _ in range(clients)))
            return sorted((o for r in results for o in r), key=lambda o: o.index), time.perf_counter() - start

    return asyncio.run(main())


def metrics(url: str) -> dict[str, float]:
    """The server's Prometheus counters this benchmark reads (samples without labels, and answered requests by
    endpoint summed over statuses)."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("qwen_audio_jax_requests_total{"):
            endpoint = name.split('endpoint="')[1].split('"')[0]
            out[f"answered {endpoint}"] = out.get(f"answered {endpoint}", 0.0) + float(value)
        elif "{" not in name:
            out[name] = float(value)
    return out


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def summary(outcomes: list[Outcome], wall: float, tokens: float) -> dict:
    """The figures of one phase: requests/s and tokens/s over its wall time (tokens: counted by the server),
    p50/p99 of latency, time to first token, time per output token and the gaps between content chunks (ms)."""
    ok = [o for o in outcomes if o.outcome == "ok"]
    streamed = [o for o in ok if o.kind == "chat"]
    gaps = [g for o in streamed for g in o.gaps]
    ttft = [o.ttft for o in streamed if o.ttft is not None]
    tpot = [o.tpot for o in streamed if o.tpot is not None]
    latency = [o.latency for o in ok]
    return {
        "sent": len(outcomes),
        "ok": len(ok),
        "errors": sum(o.outcome == "error" for o in outcomes),
        "lost": sum(o.outcome == "lost" for o in outcomes),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "generated_tokens": int(tokens),
        "latency_ms": {"p50": _pct(latency, 50), "p99": _pct(latency, 99)},
        "ttft_ms": {"p50": _pct(ttft, 50), "p99": _pct(ttft, 99)},
        "tpot_ms": {"p50": _pct(tpot, 50), "p99": _pct(tpot, 99)},
        "chunk_gap_ms": {"p50": _pct(gaps, 50), "p99": _pct(gaps, 99)},
    }
