"""The `score` job: summed log-prob (and token count) of given completions under the model.

Request lines: {"id", "messages" | "prompt" (+ "audio") | "task", "completion": str} or "completions": [str, ...]
(multiple-choice scoring). Results: {"id", "logprob", "num_tokens", "error"}, with lists for "completions".
The completion is tokenized after the rendered prompt (after "<|im_start|>assistant\\n" for chats), exactly the
tokens a DPO reference pass scores. Multi-host: the processes score in lockstep (agreed shapes; a process with
nothing left contributes padding rows) until all are done.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import jax

from qwen_audio_jax.batching.buckets import Buckets, bucket_sizes, to_buckets
from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.jobs.generate import REQUEST_KEYS, normalise_request, resolve_audio
from qwen_audio_jax.jobs.pipeline import PreparedStream
from qwen_audio_jax.jobs.records import Record
from qwen_audio_jax.model.logprobs import completion_logprobs
from qwen_audio_jax.model.params import build_module
from qwen_audio_jax.sharding.placement import agree_max, gather_processes
from qwen_audio_jax.text.processor import PreparedRequest, collate

SCORE_KEYS = (
    REQUEST_KEYS - {"max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed"}
) | {"completion", "completions"}


@dataclasses.dataclass
class _Scoring:
    id: str
    single: bool
    items: list[PreparedRequest]
    scores: list = dataclasses.field(default_factory=list)


class ScoreJob:
    name = "score"

    def __init__(self, model, *, batch_size: int = 8, buckets: Buckets = Buckets(), base_dir=None):
        self.model, self.buckets, self.base_dir = model, buckets, base_dir
        self.placement = model.placement
        self.batch_size = self.placement.round_batch(batch_size)
        self.module = build_module(model.config, dtype=model.dtype, attention=model.attention)
        self._fns: dict[int, object] = {}  # one jitted scorer per completion-length bucket
        self._tokens = 0

    def _scorer(self, completion: int):
        if completion not in self._fns:
            self._fns[completion] = jax.jit(
                functools.partial(completion_logprobs, self.module, max_completion=completion)
            )
        return self._fns[completion]

    def compiled_programs(self) -> int:
        return sum(f._cache_size() for f in self._fns.values())

    # ---- one request ------------------------------------------------------------------------------------------
    def prepare(self, record: Record) -> _Scoring:
        r = record.request
        if "completion" in r and "completions" in r:
            raise PromptError('a score request takes "completion" or "completions", not both.')
        if "completion" in r:
            completions, single = [r["completion"]], True
        elif isinstance(r.get("completions"), list) and r["completions"]:
            completions, single = r["completions"], False
        else:
            raise PromptError('a score request needs "completion" (a string) or "completions" (a list of strings).')
        if not all(isinstance(c, str) and c for c in completions):
            raise PromptError("every completion must be a non-empty string.")
        base = {k: v for k, v in r.items() if k not in ("completion", "completions")}
        base = normalise_request(
            base, chat=self.model.processor.is_chat, v1=self.model.config.is_v1, job=self.name, allowed=SCORE_KEYS
        )
        items = self.model.processor.prepare_completions(resolve_audio(base, self.base_dir), completions)
        limit = self.model.config.decoder.max_position_embeddings
        for item in items:
            if item.num_tokens > limit:
                raise PromptError(f"prompt + completion has {item.num_tokens} tokens, over the model's {limit}.")
            self.buckets.prompt_length(item.num_tokens)
        return _Scoring(record.id, single, items)

    def error_result(self, request_id: str, message: str) -> dict:
        return {"id": request_id, "logprob": None, "num_tokens": None, "error": message}

    def stats(self) -> dict:
        return {"tokens": self._tokens}

    # ---- batches ------------------------------------------------------------------------------------------------
    def run(self, stream: PreparedStream) -> Iterator[dict]:
        local = self.batch_size // jax.process_count()
        queue: list[tuple[_Scoring, int]] = []  # (request, index of its completion) rows waiting to be scored
        open_requests: list[_Scoring] = []
        while True:
            while len(queue) < local and not stream.exhausted:
                got = stream.take(local - len(queue), block=not queue)
                for req in got:
                    open_requests.append(req)
                    queue += [(req, i) for i in range(len(req.items))]
                if not got and queue:
                    break
            rows, queue = queue[:local], queue[local:]
            more = not stream.exhausted or bool(queue)
            if not self._score_rows(rows, more):
                return
            for req in [r for r in open_requests if len(r.scores) == len(r.items)]:
                open_requests.remove(req)
                yield self._result(req)

    def _score_rows(self, rows: list[tuple[_Scoring, int]], more: bool) -> bool:
        """Scores up to one local batch of rows (every process together). False when all processes are done."""
        cfg = self.model.config
        items = [req.items[i] for req, i in rows]
        inputs = collate(items, pad_id=cfg.pad_token_id, padding_side="left") if items else None
        t, c, a = bucket_sizes(inputs, self.buckets)
        longest = int(inputs.completion_mask.sum(-1).max()) if items else 1
        agreed = agree_max((len(items), t, c, a, self.buckets.completion_length(longest), int(more)))
        n_rows, t, c, a, completion, _ = agreed
        if not n_rows:
            return bool(agreed[5])
        local = self.batch_size // jax.process_count()
        batch = to_buckets(
            inputs, self.buckets, local, cfg.pad_token_id, sizes=(t, c, a), n_mels=cfg.audio.num_mel_bins
        )
        # An all-padding batch (a process with nothing left) has no completion tokens anywhere.
        completion_mask = batch.completion_mask if batch.completion_mask is not None else batch.attention_mask * 0
        arrays = [
            None if x is None else gather_processes(x)
            for x in (batch.tokens, batch.attention_mask, completion_mask, batch.mel, batch.mel_lengths)
        ]
        put = self.placement.put
        with self.placement.activate():
            res = self._scorer(completion)(
                self.model.params,
                *(put(x) for x in arrays[:3]),
                *(self.placement.put_replicated(x) for x in arrays[3:]),
            )
        sums, counts = self.placement.to_host((res.sum_logprobs, res.num_tokens))
        offset = jax.process_index() * local
        for k, (req, _) in enumerate(rows):
            req.scores.append((float(sums[offset + k]), int(counts[offset + k])))
            self._tokens += int(counts[offset + k])
        return True

    def _result(self, req: _Scoring) -> dict:
        if req.single:
            return {"id": req.id, "logprob": req.scores[0][0], "num_tokens": req.scores[0][1], "error": None}
        return {
            "id": req.id,
            "logprob": [s[0] for s in req.scores],
            "num_tokens": [s[1] for s in req.scores],
            "error": None,
        }
