"""The `score` job: summed log-prob (and token count) of given completions under the model.

Request lines: {"id", "messages" | "prompt" (+ "audio") | "task", "completion": str} or "completions": [str, ...]
(multiple-choice scoring). Results: {"id", "logprob", "num_tokens", "error"}, with lists for "completions".
The completion is tokenized after the rendered prompt (after "<|im_start|>assistant\\n" for chats), exactly the
tokens a DPO reference pass scores.

Device calls, through the device-batch protocol (batching/device_batch.py): each clip is encoded alone into a
feature buffer (one program per mel-frame bucket, as generation does), then up to `batch_size` right-padded
sequences are scored at a `score_lengths` bucket (one program each): a bounded set whatever the corpus. A
device error on a batch is retried on halves of it, so only a sequence that fails alone gets its error line.
Multi-host: the processes score in lockstep (agreed shapes; a process with nothing left contributes padding).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.audio.lengths import num_audio_tokens
from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.batching.device_batch import DeviceBatch, error_message, run_isolated
from qwen_audio_jax.choices import DEFAULT_BATCH_SIZE
from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.generation import steps
from qwen_audio_jax.jobs.generate import REQUEST_KEYS, normalise_request, resolve_audio
from qwen_audio_jax.jobs.pipeline import PreparedStream
from qwen_audio_jax.jobs.records import Record
from qwen_audio_jax.model import rope
from qwen_audio_jax.model.logprobs import score_from_buffer
from qwen_audio_jax.model.params import build_module
from qwen_audio_jax.text.processor import PreparedRequest

SCORE_KEYS = (
    REQUEST_KEYS - {"max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed"}
) | {"completion", "completions"}


# What every process agrees on (DeviceBatch.agree) before a scoring call.
class ScoreRound(NamedTuple):
    rows: int  # the most rows any process has this round (0: nothing to score now)
    more: int  # some process still has requests to read


class ScoreShape(NamedTuple):
    length: int  # the score-length bucket of the longest row
    calls: int  # encoder calls: the most clips any process has in this batch


@dataclasses.dataclass
class _Scoring:
    id: str
    single: bool
    items: list[PreparedRequest]
    scores: list = dataclasses.field(default_factory=list)  # (logprob, tokens) or an error message, per item


class ScoreJob:
    name = "score"

    def __init__(
        self,
        model,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        buckets: Buckets = Buckets(),
        base_dir=None,
        chat: bool | None = None,
    ):
        self.model, self.buckets, self.base_dir = model, buckets, base_dir
        self.chat = model.processor.is_chat if chat is None else chat  # task presets: chat turns or raw prompts
        self.placement = model.placement
        self.batch = DeviceBatch(self.placement)
        self.batch_size = self.placement.round_batch(batch_size)
        self.module = build_module(
            model.config, dtype=model.dtype, attention=model.attention, quantized=model.quantized
        )
        # A clip's rows past its own tokens are scratch: each row's region leaves a clip's worth free after it.
        self.region = buckets.score_lengths[-1] + model.config.audio.max_mel_frames // 4 + 2
        rep = self.placement.replicated()
        shape = (self.batch_size * self.region, model.config.decoder.hidden_size)
        self._zeros = jax.jit(lambda: jnp.zeros(shape, model.dtype), out_shardings=rep)
        self._encode = jax.jit(functools.partial(steps.encode, self.module), donate_argnums=(1,), out_shardings=rep)
        self._score = jax.jit(functools.partial(score_from_buffer, self.module), out_shardings=rep)
        self._features = None
        self._tokens = 0

    def compiled_programs(self) -> int:
        return sum(f._cache_size() for f in (self._zeros, self._encode, self._score))

    def program_bound(self) -> int:
        """One buffer init, one encoder program per frame bucket, one scoring program per length bucket."""
        return 1 + len(self.buckets.inference_frames) + len(self.buckets.score_lengths)

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
        base = normalise_request(base, chat=self.chat, v1=self.model.config.is_v1, job=self.name, allowed=SCORE_KEYS)
        limit = min(self.model.config.decoder.max_position_embeddings, self.buckets.score_lengths[-1])
        items = self.model.processor.prepare_completions(
            resolve_audio(base, self.base_dir), completions, max_tokens=limit
        )
        for item in items:
            if item.num_tokens > limit:
                raise PromptError(f"prompt + completion has {item.num_tokens} tokens, over the model's {limit}.")
        return _Scoring(record.id, single, items)

    def error_result(self, request_id: str, message: str) -> dict:
        return {"id": request_id, "logprob": None, "num_tokens": None, "error": message}

    def stats(self) -> dict:
        return {"tokens": self._tokens, "program_bound": self.program_bound()}

    def warm_up(self, progress: bool) -> None:
        """Nothing to do before the first request."""

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
        agreed = self.batch.agree(ScoreRound(len(rows), int(more)))
        if not agreed.rows:
            return bool(agreed.more)

        def fail(row, exc):
            row[0].scores.append(error_message(exc))
            return None

        run_isolated(rows, self._call, fail)
        return True

    def _call(self, rows: list[tuple[_Scoring, int]]) -> list[None]:
        """One scoring call over `rows` (this process's; the others contribute theirs): encode each clip into
        its row's region of the feature buffer, then score every row at one length bucket."""
        cfg, buckets = self.model.config, self.buckets
        local = self.batch_size // jax.process_count()
        items = [req.items[i] for req, i in rows]
        longest = max((it.num_tokens for it in items), default=1)
        clips = [(r, m, n) for r, it in enumerate(items) for m, n in zip(it.mels, it.mel_lengths)]
        shape = self.batch.agree(ScoreShape(buckets.score_length(longest), len(clips)))
        t, calls = shape.length, shape.calls
        if self._features is None or self._features.is_deleted():
            self._features = self._zeros()
        offsets = np.zeros(local, np.int32)  # audio tokens written so far per row
        frames = self.batch.agree([buckets.inference_mel_frames(n) for _, _, n in clips] + [0] * (calls - len(clips)))
        first_row = jax.process_index() * local
        for j in range(calls):
            mel = np.zeros((1, cfg.audio.num_mel_bins, max(frames[j], 4)), np.float32)
            length = np.zeros(1, np.int32)
            offset = np.asarray([(first_row + local - 1) * self.region + buckets.score_lengths[-1]], np.int32)
            if j < len(clips):
                r, m, n = clips[j]
                mel[0], length[0] = m[:, : frames[j]], n
                offset[0] = (first_row + r) * self.region + offsets[r]
                offsets[r] += num_audio_tokens(n)
            placed = self.batch.place(
                {"mel": mel, "mel_lengths": length, "offsets": offset}, replicated=("mel", "mel_lengths", "offsets")
            )
            self._features = self._encode(
                self.model.params, self._features, placed["mel"], placed["mel_lengths"], placed["offsets"]
            )
        tokens = np.full((local, t), cfg.pad_token_id, np.int32)
        mask, completion = np.zeros((local, t), np.int32), np.zeros((local, t), np.int32)
        audio_offset = (first_row + np.arange(local, dtype=np.int32)) * self.region
        rope_index = np.zeros(local, np.int32)
        for r, it in enumerate(items):
            n = it.num_tokens
            tokens[r, :n], mask[r, :n], completion[r, :n] = it.token_ids, 1, it.completion_mask
            rope_index[r] = rope.ntk_index(n, cfg.decoder)  # v1: the reference takes alpha from the whole sequence
        placed = self.batch.place(
            {"tokens": tokens, "mask": mask, "completion": completion, "audio_offset": audio_offset, "rope": rope_index}
        )
        with self.placement.activate():
            res = self._score(
                self.model.params,
                self._features,
                placed["tokens"],
                placed["mask"],
                placed["completion"],
                placed["audio_offset"],
                placed["rope"],
            )
        sums, counts = self.batch.mine((res.sum_logprobs, res.num_tokens), local)
        for k, (req, _) in enumerate(rows):
            req.scores.append((float(sums[k]), int(counts[k])))
            self._tokens += int(counts[k])
        return [None] * len(rows)

    def _result(self, req: _Scoring) -> dict:
        failed = next((s for s in req.scores if isinstance(s, str)), None)
        if failed is not None:
            return self.error_result(req.id, failed)
        if req.single:
            return {"id": req.id, "logprob": req.scores[0][0], "num_tokens": req.scores[0][1], "error": None}
        return {
            "id": req.id,
            "logprob": [s[0] for s in req.scores],
            "num_tokens": [s[1] for s in req.scores],
            "error": None,
        }
