"""The `generate` job: request JSONL -> result JSONL, exactly one result line per request, whatever fails.

Requests are prepared one at a time (a bad one becomes an error line at once), collected into a window of a
few batches, sorted by length inside the window (less padding, fewer buckets), generated batch by batch, and
written as each batch completes.
"""

from __future__ import annotations

import time
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

    def results(self, records: Iterable[tuple[str, dict | None, str | None]]) -> Iterator[dict]:
        """(id, record, error) -> result dicts (order: errors at once, the rest as batches finish)."""
        window: list[tuple[str, PreparedRequest]] = []
        for rid, record, error in records:
            if error is None:
                try:
                    window.append((rid, self.prepare(record)))
                except QwenAudioError as e:
                    error = str(e)
            if error is not None:
                yield _error_result(rid, error)
            if len(window) >= self.batch_size * WINDOW_BATCHES:
                yield from self._flush(window)
                window = []
        yield from self._flush(window)

    def _flush(self, window: list[tuple[str, PreparedRequest]]) -> Iterator[dict]:
        window = sorted(window, key=lambda item: item[1].num_tokens)
        for start in range(0, len(window), self.batch_size):
            yield from self._generate_batch(window[start : start + self.batch_size])

    def _generate_batch(self, batch: list[tuple[str, PreparedRequest]]) -> Iterator[dict]:
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(self.options.seed), self._batches)
        self._batches += 1
        try:
            outputs = self.engine.generate([p for _, p in batch], self.options, key=key)
        except Exception as e:  # noqa: BLE001 - one failing batch must not take the job down
            if len(batch) > 1:  # isolate the culprit: retry one by one
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
        """Streams results to `output_path`. Returns a summary {"requests", "errors", "skipped", "seconds"...}."""
        total = count_lines(input_path)
        start, n, errors = time.perf_counter(), 0, 0
        with ResultWriter(output_path, resume=resume, overwrite=overwrite) as writer:
            skipped = len(writer.done_ids)
            todo = (r for r in read_records(input_path) if r[0] not in writer.done_ids)
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
