"""The `generate` job: requests -> results through the continuous-batching engine.

Request lines: {"id", "messages": [...]} | {"id", "prompt": "...", "audio": [...]} | {"id", "task": ..., ...},
plus optional per-request "max_new_tokens" and sampling keys. Results: {"id", "text", "token_ids",
"finish_reason", "error"} (+ "logprobs" with --logprobs, + "words" for word-timestamp transcripts).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.generation.engine import Engine, EngineOptions, EngineRequest
from qwen_audio_jax.generation.options import PER_REQUEST_KEYS, GenerationOptions
from qwen_audio_jax.jobs.pipeline import PreparedStream
from qwen_audio_jax.jobs.records import Record, check_keys
from qwen_audio_jax.jobs.tasks import TASK_KEYS, expand_task
from qwen_audio_jax.jobs.timestamps import parse_word_timestamps

REQUEST_KEYS = frozenset({"id", "messages", "prompt", "audio"}) | TASK_KEYS | frozenset(PER_REQUEST_KEYS)


def resolve_audio(record: dict, base_dir: Path | None) -> dict:
    """Relative audio paths are looked up next to the request file first, then in the working directory."""
    if base_dir is None:
        return record

    def fix(p):
        if isinstance(p, str) and not os.path.isabs(p) and not os.path.exists(p) and (base_dir / p).exists():
            return str(base_dir / p)
        return p

    out = dict(record)
    if isinstance(out.get("audio"), list):
        out["audio"] = [fix(p) for p in out["audio"]]
    elif isinstance(out.get("audio"), str):
        out["audio"] = fix(out["audio"])
    if isinstance(out.get("messages"), list):
        out["messages"] = [
            {
                **m,
                "content": [
                    {**c, **{k: fix(c[k]) for k in ("audio", "audio_url", "path") if k in c}}
                    if isinstance(c, dict)
                    else c
                    for c in m["content"]
                ],
            }
            if isinstance(m, dict) and isinstance(m.get("content"), list)
            else m
            for m in out["messages"]
        ]
    return out


def normalise_request(record: dict, *, chat: bool, v1: bool, job: str, allowed: frozenset) -> dict:
    """Checks the keys and the request form; expands task presets. The one place a request's shape is judged."""
    check_keys(record, allowed, job)
    forms = [k for k in ("messages", "prompt", "task") if k in record]
    if len(forms) > 1:
        raise PromptError(f'a request takes one of "messages", "prompt" or "task", not {" and ".join(forms)}.')
    if not forms:
        raise PromptError('a request needs "messages", "prompt" (with "audio") or "task".')
    if "task" in record:
        return expand_task(record, chat=chat, v1=v1)
    if "messages" in record and "audio" in record:
        raise PromptError('"audio" goes inside the messages\' content parts, not beside "messages".')
    if isinstance(record.get("audio"), str):  # one path, not a list of characters
        record = {**record, "audio": [record["audio"]]}
    return record


class GenerateJob:
    name = "generate"

    def __init__(
        self,
        model,
        options: GenerationOptions,
        engine_options: EngineOptions = EngineOptions(),
        *,
        engine: Engine | None = None,
        chat: bool | None = None,
        base_dir: Path | None = None,
    ):
        self.model = model
        self.options = options
        self.engine_options = engine_options
        self.engine = engine or Engine(
            model.config,
            model.params,
            dtype=model.dtype,
            placement=model.placement,
            attention=model.attention,
            return_logprobs=options.return_logprobs,
            stop_ids=options.stop_ids,
            quantized=model.quantized,
            **engine_options.engine_kwargs(),
        )
        self.chat = model.processor.is_chat if chat is None else chat
        self.base_dir = base_dir
        self._prompt_tails: dict = {}  # request id -> its prompt's last token id, until its result is written

    def warm_up(self, progress: bool) -> None:
        """Before the first request: with `precompile`, the engine's whole program set (a progress bar)."""
        if self.engine_options.precompile:
            self.engine.precompile(progress)

    def prepare(self, record: Record) -> EngineRequest:
        request = normalise_request(
            record.request, chat=self.chat, v1=self.model.config.is_v1, job=self.name, allowed=REQUEST_KEYS
        )
        request = resolve_audio(request, self.base_dir)
        options = self.options.for_request(request, record.id)
        # The prompt's budget: what the engine leaves it beside its max_new_tokens, known before any tokenizing (none
        # left: the engine's own check below says so, naming max_new_tokens).
        budget = self.engine.max_len - options.max_new_tokens
        prepared = self.model.processor.prepare(request, max_tokens=budget if budget > 0 else None)
        problem = self.engine.check_request(prepared, options)
        if problem:
            raise PromptError(problem)
        self._prompt_tails[record.id] = prepared.token_ids[-1:]  # a time token opens the first word (srwt)
        return EngineRequest(record.id, prepared, options)

    def run(self, stream: PreparedStream) -> Iterator[dict]:
        for rid, out in self.engine.run(stream):
            yield self._result(rid, out)

    def _result(self, rid: str, out) -> dict:
        tail = self._prompt_tails.pop(rid, [])
        if out.error is not None:
            return self.error_result(rid, out.error)
        tokenizer = self.model.tokenizer
        result = {
            "id": rid,
            "text": tokenizer.decode(out.token_ids, skip_special_tokens=True),
            "token_ids": out.token_ids,
            "finish_reason": out.finish_reason,
            "error": None,
        }
        if out.logprobs is not None:
            result["logprobs"] = out.logprobs
        words = parse_word_timestamps(out.token_ids, tokenizer, tail)
        if words is not None:
            result["words"] = words
        return result

    def error_result(self, request_id: str, message: str) -> dict:
        return {"id": request_id, "text": None, "token_ids": [], "finish_reason": None, "error": message}

    def stats(self) -> dict:
        e = self.engine
        s = e.stats
        return {
            "tokens": s.tokens,
            "prefill_s": round(s.prefill_s, 3),
            "decode_s": round(s.decode_s, 3),
            "decode_steps": s.decode_steps,
            "engine_first_result_s": None if s.first_result_s is None else round(s.first_result_s, 3),
            "program_bound": e.program_bound(),
            "weights_bytes": e.weights_bytes,
            "kv_cache_bytes": e.kv_cache_bytes,
            "attention": e.attention_paths(),
        }
