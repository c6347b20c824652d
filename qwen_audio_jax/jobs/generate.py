"""The `generate` job: request JSONL -> result JSONL, exactly one result line per request, whatever fails.

Requests are prepared one at a time (a bad one becomes an error line at once), collected into a window of a
few batches, sorted by length inside the window (less padding, fewer buckets), generated batch by batch, and
written as each batch completes.
"""

from __future__ import annotations

import time

import numpy as np
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from qwen_audio_jax.errors import PromptError, QwenAudioError
from qwen_audio_jax.generation.engine import Engine, GenerationOptions
from qwen_audio_jax.jobs.jsonl import ResultWriter, count_lines, read_records
from qwen_audio_jax.jobs.tasks import expand_task
from qwen_audio_jax.text.processor import PreparedRequest

WINDOW_BATCHES = 8


class GenerateJob:
    def __init__(self, model, options: GenerationOptions, *, batch_size: int = 8, engine: Engine | None = None,
                 chat: bool | None = None):  # fmt: skip
        self.model = model
        self.options = options
        self.engine = engine or Engine(model.config, model.params, dtype=model.dtype, batch_size=batch_size,
                                       mesh=model.mesh, rules=model.rules)  # fmt: skip
        self.batch_size = self.engine.batch_size  # rounded up to the mesh's batch axes
        self.chat = chat if chat is not None else model.processor.has_checkpoint_chat_template
        self.tokens_generated = 0
        self._batches = 0

    # ---- one request -> PreparedRequest or an error sentence ----------------------------------------------------
    def prepare(self, record: dict) -> PreparedRequest:
        if "task" in record and "messages" not in record and "prompt" not in record:
            record = expand_task(record, chat=self.chat)
        prepared = self.model.processor.prepare(record)
        limit = self.model.config.decoder.max_position_embeddings
        if prepared.num_tokens + self.options.max_new_tokens > limit:
            raise PromptError(
                f"the prompt has {prepared.num_tokens} tokens; with max_new_tokens={self.options.max_new_tokens} "
                f"that exceeds the model's {limit}-token limit. Shorten the prompt or the audio."
            )
        self.engine.buckets.prompt_length(prepared.num_tokens)  # raises PromptError if no bucket fits
        return prepared

    @property
    def _multi(self) -> bool:
        import jax

        return self.engine.mesh is not None and jax.process_count() > 1

    @property
    def _local_batch(self) -> int:
        import jax

        return self.batch_size // jax.process_count() if self._multi else self.batch_size

    def results(self, records: Iterable[tuple[str, dict | None, str | None]]) -> Iterator[dict]:
        """(id, record, error) -> result dicts (order: errors at once, the rest as batches finish).

        Multi-host: each process passes its own share of the records; windows are processed in lockstep (a
        process with fewer batches joins with empty ones) because every batch is one collective program.
        """
        records = iter(records)
        cap = self._local_batch * WINDOW_BATCHES
        while True:
            window: list[tuple[str, PreparedRequest]] = []
            exhausted = False
            while len(window) < cap:
                item = next(records, None)
                if item is None:
                    exhausted = True
                    break
                rid, record, error = item
                if error is None:
                    try:
                        window.append((rid, self.prepare(record)))
                    except QwenAudioError as e:
                        error = str(e)
                if error is not None:
                    yield _error_result(rid, error)
            n_batches = -(-len(window) // self._local_batch)
            if self._multi:
                from jax.experimental import multihost_utils

                agreed = np.asarray(multihost_utils.process_allgather(np.asarray([n_batches, int(exhausted)])))
                n_batches, exhausted = int(agreed[..., 0].max()), bool(agreed[..., 1].min())
            yield from self._flush(window, n_batches)
            if exhausted:
                return

    def _flush(self, window: list[tuple[str, PreparedRequest]], n_batches: int) -> Iterator[dict]:
        window = sorted(window, key=lambda item: item[1].num_tokens)
        size = self._local_batch
        for i in range(n_batches):
            yield from self._generate_batch(window[i * size : (i + 1) * size])

    def _generate_batch(self, batch: list[tuple[str, PreparedRequest]]) -> Iterator[dict]:
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(self.options.seed), self._batches)
        self._batches += 1
        try:
            outputs = self.engine.generate([p for _, p in batch], self.options, key=key)
        except Exception as e:  # noqa: BLE001 - one failing batch must not take the job down
            if len(batch) > 1 and not self._multi:  # isolate the culprit: retry one by one
                for item in batch:
                    yield from self._generate_batch([item])
                return
            yield _error_result(batch[0][0], f"generation failed: {type(e).__name__}: {e}".splitlines()[0])
            return
        for (rid, _), out in zip(batch, outputs):
            self.tokens_generated += len(out.token_ids)
            result = {
                "id": rid,
                "text": self.model.tokenizer.decode(out.token_ids, skip_special_tokens=True),
                "token_ids": out.token_ids,
                "finish_reason": out.finish_reason,
                "error": None,
            }
            if out.logprobs is not None:
                result["logprobs"] = out.logprobs
            yield result

    # ---- drivers -------------------------------------------------------------------------------------------------
    def run_all(self, requests: list[dict]) -> list[dict]:
        """In-memory: results in request order."""
        records = []
        for n, r in enumerate(requests):
            rid = str(r.get("id", n)) if isinstance(r, dict) else str(n)
            records.append((rid, r, None if isinstance(r, dict) else "a request must be a dict"))
        by_id = {res["id"]: res for res in self.results(records)}
        return [by_id[rid] for rid, _, _ in records]

    def run_file(self, input_path: str | Path, output_path: str | Path, *, resume: bool = False,
                 overwrite: bool = False, progress: bool = True) -> dict:  # fmt: skip
        """Streams results to `output_path`. Returns a summary {"requests", "errors", "skipped", "seconds"...}.

        Multi-host: process p takes every P-th request, streams to `OUTPUT.part-p-of-P`, and process 0 merges
        the parts into OUTPUT at the end (every request exactly once)."""
        import jax

        if self._multi:
            return self._run_file_multihost(input_path, output_path, resume=resume, overwrite=overwrite,
                                            progress=progress and jax.process_index() == 0)  # fmt: skip
        return self._run_file(read_records(input_path), count_lines(input_path), output_path, resume=resume,
                              overwrite=overwrite, progress=progress)  # fmt: skip

    def _run_file_multihost(self, input_path, output_path, *, resume, overwrite, progress) -> dict:
        import jax
        from jax.experimental import multihost_utils

        from qwen_audio_jax.jobs.jsonl import merge_parts

        output_path = Path(output_path)
        p, procs = jax.process_index(), jax.process_count()
        part = output_path.with_name(f"{output_path.name}.part-{p}-of-{procs}")
        done = ResultWriter.existing_ids(output_path) if resume else set()
        if output_path.exists() and not (resume or overwrite):
            ResultWriter(output_path)  # raises the usual "already exists" error on every process
        mine = (r for i, r in enumerate(read_records(input_path)) if i % procs == p and r[0] not in done)
        summary = self._run_file(mine, count_lines(input_path) // procs, part, resume=resume, overwrite=True,
                                 progress=progress)  # fmt: skip
        multihost_utils.sync_global_devices("generate parts written")
        if p == 0:
            merge_parts(output_path, [output_path.with_name(f"{output_path.name}.part-{i}-of-{procs}")
                                      for i in range(procs)], keep_existing=resume)  # fmt: skip
        multihost_utils.sync_global_devices("generate parts merged")
        return summary

    def _run_file(self, records, total: int, output_path, *, resume: bool, overwrite: bool, progress: bool) -> dict:
        start, n, errors = time.perf_counter(), 0, 0
        with ResultWriter(output_path, resume=resume, overwrite=overwrite) as writer:
            skipped = len(writer.done_ids)
            todo = (r for r in records if r[0] not in writer.done_ids)
            bar = tqdm(total=total, initial=min(skipped, total), desc="generate", unit="req", disable=not progress)
            pending = 0
            for result in self.results(todo):
                writer.write(result)
                n += 1
                errors += result["error"] is not None
                pending += 1
                if pending >= self.batch_size or result["error"] is not None:
                    writer.sync()
                    pending = 0
                elapsed = time.perf_counter() - start
                bar.update()
                bar.set_postfix(req_s=f"{n / elapsed:.2f}", tok_s=f"{self.tokens_generated / elapsed:.1f}")
            bar.close()
        seconds = time.perf_counter() - start
        return {"requests": n, "errors": errors, "skipped": skipped, "seconds": round(seconds, 2),
                "tokens": self.tokens_generated}  # fmt: skip


def _error_result(rid: str, message: str) -> dict:
    return {"id": rid, "text": None, "token_ids": [], "finish_reason": None, "error": message}
