"""What the server tests share: `qwen-audio-jax serve` started in a subprocess (ready once it prints its `ready:`
line), and a local HTTP server for http(s) audio URLs that counts what it is asked and can hold its answers."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from pathlib import Path

import pytest


def start_server(command: list[str], cwd: Path, log_path: Path, timeout: float = 600):
    """(process, url, log file) of a server started with `command`; fails the test if it never gets ready."""
    log = open(log_path, "w+")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        log.seek(0)
        for line in log.read().splitlines():
            if line.startswith("ready: "):
                return proc, line.split()[1], log
    proc.kill()
    log.seek(0)
    pytest.fail(f"the server did not get ready:\n{log.read()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class MediaServer:
    """Serves the files of `root` over HTTP on 127.0.0.1. `hits` lists the paths asked for; a path under /held/
    is the file without that prefix, answered only once `release()` is called."""

    def __init__(self, root: Path):
        self.root, self.hits = root, []
        self.gate = threading.Event()
        self._cond = threading.Condition()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=str(root), **kw)

            def do_GET(self):
                with outer._cond:
                    outer.hits.append(self.path)
                    outer._cond.notify_all()
                if self.path.startswith("/held/"):
                    outer.gate.wait(300)
                    self.path = self.path[len("/held") :]
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str, held: bool = False) -> str:
        return f"{self.base}/{'held/' if held else ''}{name}"

    def count(self, prefix: str = "/") -> int:
        with self._cond:
            return sum(h.startswith(prefix) for h in self.hits)

    def wait_for_hits(self, n: int, prefix: str = "/", timeout: float = 120) -> bool:
        """Waits until `n` requests for paths under `prefix` have arrived."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(h.startswith(prefix) for h in self.hits) >= n, timeout)

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def b64(path) -> str:
    import base64

    return base64.b64encode(Path(path).read_bytes()).decode()


def audio_part(path, how: str = "input_audio") -> dict:
    """An OpenAI content part carrying the file at `path`: input_audio (base64), a data URL or a file:// URL."""
    if how == "input_audio":
        return {"type": "input_audio", "input_audio": {"data": b64(path), "format": Path(path).suffix.lstrip(".")}}
    if how == "data_url":
        return {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64(path)}"}}
    return {"type": "audio_url", "audio_url": {"url": f"file://{path}"}}


def generate_results(
    model, requests: list[dict], max_new: int, slots: int, max_len: int, logprobs: bool = False
) -> list[dict]:
    """`generate`'s results (the jobs path, greedy) for requests in the request-line format."""
    from qwen_audio_jax import api
    from qwen_audio_jax.generation.engine import EngineOptions
    from qwen_audio_jax.generation.options import GenerationOptions

    opts = EngineOptions(batch_size=slots, max_len=max_len)
    out = api.generate(
        model, requests, GenerationOptions(max_new_tokens=max_new, return_logprobs=logprobs), engine_options=opts
    )
    assert all(r["error"] is None for r in out), out
    return out
