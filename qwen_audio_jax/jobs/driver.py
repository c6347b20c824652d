"""The one batch-job driver: file in and out, resume, per-request error isolation, the input pipeline, and the
multi-host split and merge, for every job (`generate`, `score`, and `eval`'s generation).

    summary = run_file(GenerateJob(model, options), "requests.jsonl", "results.jsonl", resume=True)

Exactly one result line per request, whatever fails: a bad line or a request that cannot be prepared becomes
its own error line at once, and every other request is answered. Multi-host: process p takes every P-th
request and streams to `OUTPUT.part-p-of-P`; the jobs' device calls run in lockstep; process 0 merges the parts
into OUTPUT at the end (every request exactly once).

The request file is streamed (jobs/records.py `RequestFile`): what a job holds is the ids of its file and of its
results file, and the requests in flight in the input pipeline, never the requests of the whole file.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from qwen_audio_jax.checkpoint.safe_write import check_result_file
from qwen_audio_jax.jobs.pipeline import PreparedStream
from qwen_audio_jax.jobs.records import Record, RequestFile, records_from_list
from qwen_audio_jax.jobs.results import ResultWriter, error_ids, merge_parts, order_results
from qwen_audio_jax.runtime import track_compilations


class Job(Protocol):
    name: str

    def prepare(self, record: Record) -> object:
        """One request -> what `run` consumes (runs in a worker thread; raises QwenAudioError on bad input)."""

    def run(self, stream: PreparedStream) -> Iterator[dict]:
        """Result dicts of the prepared requests, as each finishes."""

    def error_result(self, request_id: str, message: str) -> dict:
        """The result line of a request that failed."""

    def stats(self) -> dict:
        """Job-specific figures for the summary (tokens, device time...)."""

    def warm_up(self, progress: bool) -> None:
        """Runs before the first request (the generate job's --precompile)."""


def _drive(job: Job, records, write, progress_total: int, initial: int, progress: bool, workers: int | None):
    """Runs `job` over `records`, calling write(result) for every result (errors included). Returns the
    stream's input-wait seconds and the time of the first result."""
    job.warm_up(progress)
    bar = tqdm(total=progress_total, initial=initial, desc=job.name, unit="req", disable=not progress)
    start = time.perf_counter()
    first: list[float] = []

    def emit(result: dict) -> None:
        if not first:
            first.append(time.perf_counter() - start)
        write(result)
        bar.update()
        stats = job.stats()
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(req_s=f"{bar.n / elapsed:.2f}", tok_s=f"{stats.get('tokens', 0) / elapsed:.0f}", refresh=False)

    with PreparedStream(
        records, job.prepare, lambda rid, msg: emit(job.error_result(rid, msg)), workers=workers
    ) as stream:
        for result in job.run(stream):
            emit(result)
        wait = stream.wait_s
    bar.close()
    return wait, (first[0] if first else None)


def run_list(job: Job, requests: list, *, workers: int | None = None) -> list[dict]:
    """In-memory: one result per request, in request order (the Python API)."""
    records = list(records_from_list(requests))
    by_id: dict[str, dict] = {}
    _drive(job, records, lambda r: by_id.__setitem__(r["id"], r), len(records), 0, False, workers)
    return [by_id[r.id] for r in records]


def run_file(
    job: Job,
    input_path: str | Path,
    output_path: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
    workers: int | None = None,
    ordered: bool = False,
) -> dict:
    """Streams results to `output_path`. Returns the summary (requests, errors, skipped, seconds, ...).
    Lines come in completion order; with `ordered`, a completed run's file is then rewritten in input order.

    The output is checked before anything runs: it may not be the input, a directory, or an existing file that
    is not one of our results (checkpoint/safe_write.py); --resume and --overwrite together are refused."""
    import jax

    compile_stats = track_compilations()
    compiled0, compile_s0 = compile_stats.compiled, compile_stats.seconds
    output_path = check_result_file(output_path, input_path=input_path, resume=resume, overwrite=overwrite)
    records = RequestFile(input_path)
    procs, me = jax.process_count(), jax.process_index()
    start = time.perf_counter()
    if procs > 1:
        from jax.experimental import multihost_utils

        done = ResultWriter.existing_ids(output_path) if resume else set()
        if resume and retry_errors:
            done -= error_ids(output_path)
        mine = (r for i, r in enumerate(records) if i % procs == me and r.id not in done)
        part = output_path.with_name(f"{output_path.name}.part-{me}-of-{procs}")
        summary = _run_to(
            job,
            mine,
            part,
            resume=False,
            retry_errors=False,
            progress=progress and me == 0,
            workers=workers,
            total=len(records) // procs,
        )
        summary["skipped"] = len(done)
        multihost_utils.sync_global_devices("job parts written")
        if me == 0:
            parts = [output_path.with_name(f"{output_path.name}.part-{i}-of-{procs}") for i in range(procs)]
            merge_parts(output_path, parts, keep_existing=resume, retry_errors=retry_errors)
        multihost_utils.sync_global_devices("job parts merged")
    else:
        summary = _run_to(
            job,
            records,
            output_path,
            resume=resume,
            retry_errors=retry_errors,
            progress=progress,
            workers=workers,
            total=len(records),
        )
    if ordered and me == 0:  # every request is answered by now: the rewrite never meets a half-done file
        summary["ordered"] = order_results(output_path, lambda: (r.id for r in records))
    seconds = time.perf_counter() - start
    summary.update(
        seconds=round(seconds, 3),
        compiled_programs=compile_stats.compiled - compiled0,
        compile_s=round(compile_stats.seconds - compile_s0, 3),
    )
    summary["input_wait_fraction"] = round(summary.pop("input_wait_s") / max(seconds, 1e-9), 4)
    return summary


def _run_to(job: Job, records: Iterable[Record], path: Path, *, resume, retry_errors, progress, workers, total) -> dict:
    counts = {"requests": 0, "errors": 0}
    with ResultWriter(path, resume=resume, retry_errors=retry_errors) as writer:
        skipped = len(writer.done_ids)
        todo = (r for r in records if r.id not in writer.done_ids)  # read as the pipeline asks for them

        def write(result: dict) -> None:
            writer.write(result)  # flushed at once: a killed process loses only what was in flight
            counts["requests"] += 1
            counts["errors"] += result.get("error") is not None

        wait, first = _drive(job, todo, write, total, min(skipped, total), progress, workers)
    return {
        **counts,
        "skipped": skipped,
        "retried": writer.retried,
        "first_result_s": first,
        "input_wait_s": wait,
        **job.stats(),
    }
