"""`qwen-audio-jax serve` under load: N concurrent clients for a fixed time against the same requests run one at a
time, on one server process, in one run. One JSON line.

The server: `qwen-audio-jax serve` in a subprocess on the bundled demo model (or --model DIR, or --bench-model:
the ~142M model of benchmarks/_common.py with the real 156,032 vocab), started twice: first with an empty
persistent compilation cache (cold: every program compiled), then, after a SIGTERM drain, with the cache that left
(warm: the programs loaded); each start-up is reported from the spawn to the `ready:` line, with the seconds the
server itself spent compiling or loading its programs. The warm server then takes the load.

The corpus (--requests distinct requests): streamed chats with one clip sent as input_audio and a question, each
with its own max_tokens (16 / 32 / 64 / 48, min_tokens equal, so a request does the same work whenever it runs),
and every fourth a transcription upload (the asr preset). Clips: the fixture clips of ../shared as they are
(flac, mp3, wav at 16-48 kHz; the 97 s music cut into 8 s pieces; synthetic audio where ../shared is absent)
and the bundled demo clips with their own questions.

Phases, each over the corpus in order, round-robin: a reference pass (every request once, alone: its text is
the reference and it warms up the server's audio decoders); "sequential" (one client, --seconds); "concurrent"
(--clients clients, --seconds). A phase stops sending at --seconds and waits for what is in flight. Reported per
phase: requests/s, tokens/s (generated, counted by the server's /metrics), p50/p99 of request latency, time to
first token (streamed chats), time per output token ((last content - first content) / (tokens - 1)) and the gaps
between content chunks as they arrived. Counted: every request sent is answered or given its error (outcomes in
benchmarks/_serve_client.py; the server's own count of answered requests must agree) and every answer's text
equals the request's reference text (greedy: batch invariance through the server). Exit status 1 if either fails.

The clients run on the same machine as the server (one asyncio process with httpx), so on a small CPU they take
some of its time.

    python benchmarks/serve.py [--clients 8] [--seconds 30] [--batch-size 8] [--requests 24] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from _serve_client import Job, metrics, run_phase, summary  # noqa: E402

BUDGETS = (16, 32, 64, 48)
QUESTIONS = (
    "What does the speaker say?",
    "Describe the sound.",
    "What is the mood of this audio?",
    "Which language is spoken?",
)
READY = re.compile(r"^ready: (\S+) \(.*?(\d+) programs compiled in ([\d.]+) s\)")
ENDPOINTS = ("/v1/chat/completions", "/v1/audio/transcriptions")


def clip_files(work: Path) -> list[tuple[str, bytes, str, str | None]]:
    """(name, bytes, format, the clip's own question or None): fixture clips and demo clips, interleaved."""
    import soundfile as sf
    from _common import fixture_audio

    from qwen_audio_jax.demo.bundle import DEMO_CLIPS, load_demo_items
    from tests._paths import fixture_clips

    fixtures = []
    for path in fixture_clips():
        if path.name.startswith("music_"):
            for k in range(2):
                wav, _ = fixture_audio(path.name, 8.0, 20.0 + 30.0 * k, seed=k)
                sf.write(work / f"music{k}.wav", wav, 16000)
                fixtures.append((f"music{k}.wav", (work / f"music{k}.wav").read_bytes(), "wav", None))
        else:
            fixtures.append((path.name, path.read_bytes(), path.suffix.lstrip("."), None))
    if not fixtures:  # ../shared absent: synthetic clips of 2-8 s
        for k, seconds in enumerate((2.0, 5.0, 8.0, 3.5)):
            wav, _ = fixture_audio("absent.wav", seconds, 0.0, seed=k)
            sf.write(work / f"synth{k}.wav", wav, 16000)
            fixtures.append((f"synth{k}.wav", (work / f"synth{k}.wav").read_bytes(), "wav", None))
    demo = [(Path(i.clip).name, (DEMO_CLIPS / i.clip).read_bytes(), "flac", i.question) for i in load_demo_items()]
    out = []
    for k in range(max(len(fixtures), len(demo))):
        out += [x[k] for x in (fixtures, demo) if k < len(x)]
    return out


def make_corpus(work: Path, n: int, budgets: tuple[int, ...]) -> list[Job]:
    clips = clip_files(work)
    corpus = []
    for i in range(n):
        name, data, fmt, question = clips[i % len(clips)]
        if i % 4 == 3:
            corpus.append(Job("transcription", name, data, fmt))
        else:
            chats = i - i // 4  # chats so far: each budget in turn
            prompt = question or QUESTIONS[chats % len(QUESTIONS)]
            corpus.append(Job("chat", name, data, fmt, prompt, budgets[chats % len(budgets)]))
    return corpus


class Server:
    """`qwen-audio-jax serve` in a subprocess; its output goes to a log file read for the `ready:` line."""

    def __init__(self, argv: list[str], log: Path):
        self.argv, self.log = argv, log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 1200) -> dict:
        t0 = time.perf_counter()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qwen_audio_jax.cli.main", "serve", *self.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        while time.perf_counter() - t0 < timeout and self.proc.poll() is None:
            for line in self.log.read_text().splitlines():
                m = READY.match(line)
                if m:
                    self.url = m.group(1)
                    seconds = time.perf_counter() - t0
                    return {"ready_s": round(seconds, 2), "programs": int(m.group(2)), "compile_s": float(m.group(3))}
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the server did not get ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def phase(server: Server, corpus, model, clients, seconds, reference=None, limit=None) -> tuple[dict, list]:
    before = metrics(server.url)
    outcomes, wall = run_phase(server.url, corpus, model, clients, seconds, limit)
    after = metrics(server.url)
    tokens = after["qwen_audio_jax_generation_tokens_total"] - before["qwen_audio_jax_generation_tokens_total"]
    out = summary(outcomes, wall, tokens)
    answered = sum(after.get(f"answered {e}", 0) - before.get(f"answered {e}", 0) for e in ENDPOINTS)
    out["server_answered"] = int(answered)
    if reference is not None:
        out["text_differs"] = sum(o.outcome == "ok" and o.text != reference[o.index % len(corpus)] for o in outcomes)
    problems = [f"{o.index}: {o.outcome} {o.detail}" for o in outcomes if o.outcome != "ok"]
    if problems:
        out["not_ok"] = problems[:10]
    return out, outcomes


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return (
        f"{platform.machine()} {cpu} {os.cpu_count()} cores, {platform.system()}, jax {version('jax')} "
        f"({os.environ.get('JAX_PLATFORMS') or 'default backend'})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0, help="per load phase")
    ap.add_argument("--batch-size", type=int, default=8, help="the server's decode slots")
    ap.add_argument("--requests", type=int, default=24, help="distinct requests in the corpus")
    ap.add_argument("--model", default=None, help="a model dir (default: the bundled demo model)")
    ap.add_argument("--bench-model", action="store_true", help="the ~142M benchmark model (benchmarks/_common.py)")
    ap.add_argument("--smoke", action="store_true", help="2 clients, 2 slots, 4 requests of 8 tokens, 2 s phases")
    args = ap.parse_args()
    budgets = BUDGETS
    if args.smoke:
        args.clients, args.seconds, args.batch_size, args.requests, budgets = 2, 2.0, 2, 4, (8,)

    work = Path(tempfile.mkdtemp(prefix="qaj-serve-bench-"))
    try:
        return run(args, budgets, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the clips, the logs and the compilation cache of this run


def run(args, budgets: tuple[int, ...], work: Path) -> int:
    if args.bench_model:
        from _common import build_model

        model_dir = build_model(work)[1]
    else:
        from qwen_audio_jax.demo.bundle import DEMO_MODEL

        model_dir = Path(args.model) if args.model else DEMO_MODEL
    name = "bench"
    corpus = make_corpus(work, args.requests, budgets)
    argv = ["--model", str(model_dir), "--served-model-name", name, "--port", "0", "--no-progress"]
    argv += ["--batch-size", str(args.batch_size), "--compilation-cache", str(work / "xla")]
    startup = {}
    cold = Server(argv, work / "cold.log")
    startup["cold"] = cold.start()
    startup["cold"]["exit_status"] = cold.stop()
    server = Server(argv, work / "warm.log")
    startup["warm"] = server.start()
    try:
        ref, ref_outcomes = phase(server, corpus, name, 1, float("inf"), limit=len(corpus))
        reference = [o.text for o in ref_outcomes]
        sequential, _ = phase(server, corpus, name, 1, args.seconds, reference)
        concurrent, _ = phase(server, corpus, name, args.clients, args.seconds, reference)
    finally:
        startup["warm"]["exit_status"] = server.stop()
    phases = (ref, sequential, concurrent)
    lost = sum(p["lost"] for p in phases)
    errors = sum(p["errors"] for p in phases)
    counted = all(p["server_answered"] == p["sent"] for p in phases)
    differs = sequential["text_differs"] + concurrent["text_differs"]
    result = {
        "benchmark": "serve",
        "model": model_dir.name,
        "slots": args.batch_size,
        "clients": args.clients,
        "seconds": args.seconds,
        "corpus": {
            "requests": len(corpus),
            "chat": sum(j.kind == "chat" for j in corpus),
            "transcription": sum(j.kind == "transcription" for j in corpus),
            "max_tokens": sorted({j.max_tokens for j in corpus if j.kind == "chat"}),
            "clips": sorted({j.name for j in corpus}),
        },
        "startup": startup,
        "reference_pass": {k: ref[k] for k in ("sent", "ok", "errors", "lost", "wall_s")},
        "sequential": sequential,
        "concurrent": concurrent,
        "speedup_requests_per_s": round(concurrent["requests_per_s"] / max(sequential["requests_per_s"], 1e-9), 2),
        "speedup_tokens_per_s": round(concurrent["tokens_per_s"] / max(sequential["tokens_per_s"], 1e-9), 2),
        "nothing_lost": lost == 0 and counted,
        "errors": errors,
        "same_text_as_alone": differs == 0,
        "machine": machine(),
    }
    print(json.dumps(result))
    exits = (startup["cold"]["exit_status"], startup["warm"]["exit_status"])
    return 0 if lost == 0 and counted and differs == 0 and errors == 0 and exits == (0, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
