"""The `score` job: summed log-prob (and token count) of given completions under the model.

Request lines: {"id", "messages" | "prompt" (+ "audio"), "completion": str} or "completions": [str, ...]
(multiple-choice scoring). Results: {"id", "logprob", "num_tokens", "error"}, with lists for "completions".
The completion is tokenized after the rendered prompt (after "<|im_start|>assistant\\n" for chats), exactly the
tokens a DPO reference pass scores.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
from tqdm import tqdm

from qwen_audio_jax.errors import PromptError, QwenAudioError
from qwen_audio_jax.generation.buckets import Buckets, to_buckets
from qwen_audio_jax.jobs.jsonl import ResultWriter, count_lines, read_records
from qwen_audio_jax.model.logprobs import CompletionLogprobs, completion_logprobs
from qwen_audio_jax.model.params import build_model
from qwen_audio_jax.sharding import mesh as shd
from qwen_audio_jax.text.processor import PreparedRequest, collate


class ScoreJob:
    def __init__(self, model, *, batch_size: int = 8, buckets: Buckets = Buckets()):
        self.model = model
        self.buckets = buckets
        module = build_model(model.config, dtype=model.dtype)
        self._module = module
        mesh, rules = model.mesh, model.rules
        divisor = 1 if mesh is None else shd.batch_divisor(mesh, rules)
        self.batch_size = -(-batch_size // divisor) * divisor
        self._fns: dict[int, object] = {}  # one jitted scorer per completion-length bucket

    def _score(self, completion: int):
        if completion not in self._fns:
            score = functools.partial(completion_logprobs, self._module, max_completion=completion)
            mesh, rules = self.model.mesh, self.model.rules
            if mesh is None:
                self._fns[completion] = jax.jit(score)
            else:
                b1, b2 = shd.batch_sharding(mesh, 1, rules), shd.batch_sharding(mesh, 2, rules)
                out = CompletionLogprobs(sum_logprobs=b1, num_tokens=b1, mean_logits=b1, token_logprobs=b2)
                p_sh = shd.param_shardings(mesh, self.model.config, rules)
                self._fns[completion] = jax.jit(score, in_shardings=(p_sh, b2, b2, b2, None, None), out_shardings=out)
        return self._fns[completion]

    def compiled_programs(self) -> int:
        return sum(f._cache_size() for f in self._fns.values())

    def _prepare(self, record: dict) -> list[PreparedRequest]:
        if "completion" in record:
            completions, single = [record["completion"]], True
        elif "completions" in record and isinstance(record["completions"], list) and record["completions"]:
            completions, single = record["completions"], False
        else:
            raise PromptError('a score request needs "completion" (a string) or "completions" (a list of strings).')
        if not all(isinstance(c, str) and c for c in completions):
            raise PromptError("every completion must be a non-empty string.")
        base = {k: v for k, v in record.items() if k not in ("completion", "completions")}
        items = [self.model.processor.prepare({**base, "completion": c}) for c in completions]
        limit = self.model.config.decoder.max_position_embeddings
        for item in items:
            if item.num_tokens > limit:
                raise PromptError(f"prompt + completion has {item.num_tokens} tokens, over the model's {limit}.")
            self.buckets.prompt_length(item.num_tokens)
        return items if not single else items[:1]

    def score_prepared(self, items: list[PreparedRequest]) -> list[tuple[float, int]]:
        """(summed log-prob, token count) per prepared request with a completion."""
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            pad = self.model.config.pad_token_id
            batch = to_buckets(collate(chunk, pad_id=pad, padding_side="left"), self.buckets, self.batch_size, pad)
            completion = self.buckets.completion_length(int(batch.completion_mask.sum(-1).max()))
            with shd.activated(self.model.mesh, self.model.rules):
                res = self._score(completion)(
                    self.model.params, *(self._put(x) for x in (batch.tokens, batch.attention_mask,
                                                                batch.completion_mask)),
                    *(self._put_replicated(x) for x in (batch.mel, batch.mel_lengths)),
                )  # fmt: skip
            sums, counts = jax.device_get((res.sum_logprobs, res.num_tokens))
            out += [(float(sums[i]), int(counts[i])) for i in range(batch.num_real)]
        return out

    def _put(self, x):
        if self.model.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(x, shd.batch_sharding(self.model.mesh, x.ndim, self.model.rules))

    def _put_replicated(self, x):
        if x is None or self.model.mesh is None:
            return None if x is None else jnp.asarray(x)
        return jax.device_put(x, shd.replicated(self.model.mesh))

    def results(self, records: Iterable[tuple[str, dict | None, str | None]]) -> Iterator[dict]:
        pending: list[tuple[str, bool, list[PreparedRequest]]] = []
        for rid, record, error in records:
            if error is None:
                try:
                    pending.append((rid, "completion" in record, self._prepare(record)))
                except QwenAudioError as e:
                    error = str(e)
            if error is not None:
                yield {"id": rid, "logprob": None, "num_tokens": None, "error": error}
            if sum(len(p[2]) for p in pending) >= self.batch_size:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _flush(self, pending) -> Iterator[dict]:
        flat = [item for _, _, items in pending for item in items]
        scores = iter(self.score_prepared(flat)) if flat else iter(())
        for rid, single, items in pending:
            got = [next(scores) for _ in items]
            if single:
                yield {"id": rid, "logprob": got[0][0], "num_tokens": got[0][1], "error": None}
            else:
                yield {"id": rid, "logprob": [g[0] for g in got], "num_tokens": [g[1] for g in got], "error": None}

    def run_all(self, requests: list[dict]) -> list[dict]:
        records = [(str(r.get("id", n)), r, None) for n, r in enumerate(requests)]
        by_id = {res["id"]: res for res in self.results(records)}
        return [by_id[rid] for rid, _, _ in records]

    def run_file(self, input_path: str | Path, output_path: str | Path, *, resume: bool = False,
                 overwrite: bool = False, progress: bool = True) -> dict:  # fmt: skip
        total = count_lines(input_path)
        start, n, errors = time.perf_counter(), 0, 0
        with ResultWriter(output_path, resume=resume, overwrite=overwrite) as writer:
            skipped = len(writer.done_ids)
            bar = tqdm(total=total, initial=min(skipped, total), desc="score", unit="req", disable=not progress)
            for result in self.results(r for r in read_records(input_path) if r[0] not in writer.done_ids):
                writer.write(result)
                n += 1
                errors += result["error"] is not None
                bar.update()
                if n % self.batch_size == 0:
                    writer.sync()
            bar.close()
        return {"requests": n, "errors": errors, "skipped": skipped, "seconds": round(time.perf_counter() - start, 2)}
