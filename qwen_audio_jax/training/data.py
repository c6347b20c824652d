"""Preference (DPO) and SFT data files -> validated, tokenized pairs.

A data file is JSONL (one record a line) or a JSON array of records (LLaMA-Factory's usual `.json`). The form of
each record is detected on its own, so one file may mix them:

  ours       {"id", "messages": [...] | "prompt": str (+ "audio": [paths]), "chosen": str, "rejected": str}
  TRL        {"prompt": [turns], "chosen": [assistant turn], "rejected": [assistant turn]}, or the implicit-prompt
             form {"chosen": [whole conversation], "rejected": [whole conversation]} (every turn but the last shared)
  LLaMA-     {"conversations": [{"from": "human", "value": "<audio>..."}], "chosen": {"from": "gpt", "value"},
  Factory     "rejected": {...}, "audios": [paths], "system"?}; each `<audio>` takes the next path of "audios"
  SFT        (read_sft_file) "messages" / "conversations" ending with the assistant turn to learn, a "completion"
             next to a prompt, or any preference form above (its "chosen" is the target)

Every form becomes a `PreferenceExample` whose request is in the processor's form ({"messages"} with audio parts
`{"type": "audio", "audio": absolute path}`, or {"prompt", "audio"}). Relative audio paths resolve against the data
file's folder (so a dataset folder can move whole). A record that cannot be used is reported as (id, sentence),
never raised: one bad line must not stop a run, but the report says how many were dropped and why.

`validate_examples` prepares every example up front on a thread pool (audio loaded once per example, shared by
chosen and rejected; for training start-up, `keep_mels=False`, a wav / flac clip is not even decoded: its length
comes from the file header) and drops, never truncates, what cannot be trained on: cutting a sequence could cut
inside an `<|AUDIO|>` span, and a silently shortened completion would bias the preference.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qwen_audio_jax.audio.constants import SAMPLE_RATE
from qwen_audio_jax.audio.decoder_warmup import realize_decoder_types
from qwen_audio_jax.audio.load import load_audio
from qwen_audio_jax.audio.load_v1 import load_audio_v1
from qwen_audio_jax.config import QWEN_AUDIO_V1
from qwen_audio_jax.errors import AudioError, ConfigError, DataError, QwenAudioError
from qwen_audio_jax.jsonl import iter_jsonl, open_jsonl
from qwen_audio_jax.text.chat_template import v1_extract_audio_paths
from qwen_audio_jax.text.processor import PreparedRequest, Processor
from qwen_audio_jax.text.tokenizer import AUDIO_TOKEN
from qwen_audio_jax.training.formats import parse_record

__all__ = [
    "PreferenceExample",
    "PreparedPair",
    "ValidationReport",
    "read_examples",
    "validate_examples",
    "clip_samples_16k",
    "pair_fingerprint",
]


@dataclass
class PreferenceExample:
    """One parsed record. request: the PROMPT only, {"messages": [...]} or {"prompt": str, "audio": [paths]};
    chosen / rejected: completion texts (rejected is None for SFT)."""

    id: str
    request: dict
    chosen: str
    rejected: str | None = None


@dataclass
class PreparedPair:
    """An example ready to batch: chosen and rejected share the prompt's `mels` list (one featurization)."""

    id: str
    chosen: PreparedRequest
    rejected: PreparedRequest | None = None


# -- reading ----------------------------------------------------------------------------------------------------------


def read_examples(path: str | Path, preference: bool) -> tuple[list[PreferenceExample], list[tuple[str, str]]]:
    """Parse a training file: preference pairs (preference=True) or SFT examples (rejected=None). Returns
    (examples, [(id, error sentence)] of the records that could not be used).

    Raises DataError only for the file as a whole (missing, not UTF-8, a JSON array that does not parse)."""
    path = Path(path)
    base_dir = path.absolute().parent
    examples, errors, seen = [], [], {}
    for n, where, rec in _records(path):
        rid = rec.get("id") if isinstance(rec, dict) else None
        rid = f"{path.stem}-{n}" if rid is None or rid == "" else str(rid)
        try:
            if isinstance(rec, DataError):  # a line that is not JSON
                raise rec
            if rid in seen:
                raise DataError(f"duplicate id {rid!r} (first used on {seen[rid]}); give every record its own id")
            request, chosen, rejected = parse_record(rec, base_dir, preference)
        except DataError as e:
            errors.append((rid, f"{path.name} {where}: {e}"))
            continue
        seen[rid] = where
        examples.append(PreferenceExample(rid, request, chosen, rejected))
    return examples, errors


def _records(path: Path) -> Iterator[tuple[int, str, object]]:
    """(1-based record number, "line N" / "record N", parsed JSON or a DataError for a line that does not parse)."""
    open_jsonl(path, "data file")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):  # a JSON array, as LLaMA-Factory ships its datasets
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason}); save the data file as UTF-8") from None
        except ValueError as e:
            raise DataError(f"{path}: the JSON array does not parse ({e}); fix it or write one record a line") from None
        yield from ((i, f"record {i}", rec) for i, rec in enumerate(data, 1))
        return
    # JSON Lines, one line at a time: a bad byte or a lone surrogate drops that record only (counted).
    for i, rec, error in iter_jsonl(path, "data file"):
        yield i, f"line {i}", rec if error is None else DataError(error.split(": ", 1)[1])


# -- validation -------------------------------------------------------------------------------------------------------

# Report category -> words for the log.
CATEGORIES = {
    "audio_mismatch": "audio count vs placeholders mismatch",
    "unreadable_audio": "unreadable audio",
    "too_long": "too long",
    "bad_records": "bad records",
    "prompt_errors": "other prompt errors",
}
MAX_SAMPLES = 5


@dataclass
class ValidationReport:
    """What `validate_examples` kept and dropped; `samples` holds up to 5 (id, message) per drop category."""

    source: str = "<examples>"
    max_length: int = 0
    total: int = 0
    kept: int = 0
    audio_mismatch: int = 0
    unreadable_audio: int = 0
    too_long: int = 0
    bad_records: int = 0
    prompt_errors: int = 0
    samples: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: {k: [] for k in CATEGORIES})

    @property
    def dropped(self) -> int:
        return sum(getattr(self, k) for k in CATEGORIES)

    def add(self, category: str, example_id: str, message: str) -> None:
        setattr(self, category, getattr(self, category) + 1)
        if len(self.samples[category]) < MAX_SAMPLES:
            self.samples[category].append((example_id, message))

    def headline(self) -> str:
        why = ", ".join(
            f"{getattr(self, k)} {w}" + (f" (> {self.max_length} tokens)" if k == "too_long" else "")
            for k, w in CATEGORIES.items()
            if getattr(self, k)
        )
        return f"{self.source}: {self.total} examples, {self.kept} kept, {self.dropped} dropped" + (
            f" ({why})" if why else ""
        )

    def summary(self) -> str:
        """The headline, then the first example of each drop category: a few lines for the log."""
        lines = [self.headline()]
        lines += [f"  {CATEGORIES[k]}: {s[0][0]}: {s[0][1]}" for k, s in self.samples.items() if s]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "max_length": self.max_length,
            "total": self.total,
            "kept": self.kept,
            "dropped": {k: getattr(self, k) for k in CATEGORIES},
            "samples": {k: [list(s) for s in v] for k, v in self.samples.items()},
        }


def validate_examples(
    examples: Sequence[PreferenceExample],
    processor: Processor,
    max_length: int,
    *,
    bad_records: Sequence[tuple[str, str]] = (),
    source: str = "<examples>",
    completion_suffix: str = "",
    keep_mels: bool = True,
    workers: int = 8,
) -> tuple[list[PreparedPair], ValidationReport]:
    """Prepare every example; drop (never truncate) the ones that cannot be trained on.

    Args:
      examples: from `read_examples`.
      processor: the model's processor; each example's audio is loaded and featurized once (`prepare_completions`).
      max_length: the longest sequence (prompt + completion tokens, audio tokens included) a batch row may hold;
        an example whose chosen or rejected sequence is longer is dropped as "too long".
      bad_records: the (id, error) list from the reader, counted in the report as "bad records".
      source: the data file, named in the report and in the error.
      completion_suffix: text appended to every completion before tokenizing (e.g. "<|im_end|>", so the policy
        learns to end its turn); counted in max_length. Whoever prepares the batches later must append it too.
      keep_mels: False returns pairs without `mels` (token ids and mel lengths only): a clip's log-mel is 1.5 MB at
        128 bins, so holding every clip of a large dataset is not an option when the batches are prepared again
        later anyway. Then a wav / flac clip is not decoded at all: its 16 kHz length comes from the file header
        (`clip_samples_16k`), which is all the token count needs; other formats are decoded (no log-mel kept).
      workers: threads validating examples at once (decoding, tokenizing release the GIL).

    Returns:
      (pairs in input order, report).

    Raises:
      DataError: no example survived; the message carries the report's headline and first problem.
    """
    if not isinstance(max_length, int) or max_length <= 0:
        raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
    report = ValidationReport(source=str(source), max_length=max_length, total=len(examples) + len(bad_records))
    for rid, message in bad_records:
        report.add("bad_records", rid, message)
    v1 = processor.variant == QWEN_AUDIO_V1
    one = functools.partial(
        _validate_one, processor=processor, max_length=max_length, suffix=completion_suffix, v1=v1, cheap=not keep_mels
    )
    pairs = []
    realize_decoder_types()  # before the pool: soundfile's cffi types are not safe to build concurrently
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(examples)))) as pool:  # in input order
        for ex, outcome in zip(examples, pool.map(one, examples)):
            if isinstance(outcome, PreparedPair):
                pairs.append(outcome)
            else:
                report.add(outcome[0], ex.id, outcome[1])
    report.kept = len(pairs)
    if not pairs:
        first = next((f"{s[0][0]}: {s[0][1]}" for s in report.samples.values() if s), "the file holds no records")
        raise DataError(f"every example was invalid: {report.headline()}; first problem: {first}")
    return pairs, report


def _validate_one(ex: PreferenceExample, *, processor, max_length, suffix, v1, cheap):
    """One example -> its PreparedPair, or (report category, message) saying why it is dropped."""
    mismatch = _placeholder_mismatch(ex.request, processor.variant)
    if mismatch:
        return "audio_mismatch", mismatch
    completions = [ex.chosen] + ([] if ex.rejected is None else [ex.rejected])
    try:
        request = _with_stand_in_audio(ex.request, v1) if cheap else ex.request
        prepared = processor.prepare_completions(request, [c + suffix for c in completions])
    except AudioError as e:
        return "unreadable_audio", str(e)
    except QwenAudioError as e:
        return "prompt_errors", str(e)
    too_long = [
        f"{side} has {p.num_tokens} tokens > max_length {max_length}"
        for side, p in zip(("chosen", "rejected"), prepared)
        if p.num_tokens > max_length
    ]
    if too_long:
        return "too_long", "; ".join(too_long)
    if cheap:
        for p in prepared:
            p.mels = []  # stand-in features (or real ones nobody keeps)
    return PreparedPair(ex.id, prepared[0], prepared[1] if len(prepared) > 1 else None)


_HEADER_EXACT = (".wav", ".wave", ".flac")  # libsndfile's frame count is the decoded length


def clip_samples_16k(path: str | Path, v1: bool) -> int:
    """How many 16 kHz samples the variant's loader gives for the file at `path`, read from its header where that
    is exact: a wav / flac clip's frame count at 16 kHz; resampled by librosa (Qwen2-Audio), the length
    `librosa.resample` keeps, ceil(n * (16000 / sr)) in floats as it computes it. Otherwise (mp3, ogg..., or v1's
    FFmpeg resampler) the clip is decoded. Raises AudioError for an unreadable file."""
    import soundfile

    p = Path(path)
    if p.suffix.lower() in _HEADER_EXACT and p.is_file():
        try:
            info = soundfile.info(str(p))
        except Exception:  # noqa: BLE001 -- the loader below names the problem
            info = None
        if info is not None and info.frames > 0:
            if info.samplerate == SAMPLE_RATE:
                return int(info.frames)
            if not v1:
                return int(np.ceil(info.frames * (float(SAMPLE_RATE) / info.samplerate)))
    return len((load_audio_v1 if v1 else load_audio)(p))


def _with_stand_in_audio(request: dict, v1: bool) -> dict:
    """`request` with every audio file replaced by silence of the same 16 kHz length: the processor then gives the
    real token ids and mel lengths without decoding anything it can read from a header."""

    def stand_in(src):
        return np.zeros(clip_samples_16k(src, v1), np.float32) if isinstance(src, (str, os.PathLike)) else src

    if "messages" in request:
        messages = []
        for m in request["messages"]:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = [
                    {**part, "audio": stand_in(part["audio"])}
                    if isinstance(part, dict) and part.get("type") == "audio" and "audio" in part
                    else part
                    for part in content
                ]
                m = {**m, "content": content}
            messages.append(m)
        return {**request, "messages": messages}
    if "prompt" in request:
        audio = request.get("audio")
        if audio is None and v1 and isinstance(request["prompt"], str):  # v1: the paths inside <audio>...</audio>
            audio = v1_extract_audio_paths(request["prompt"])
        if isinstance(audio, list):
            return {**request, "audio": [stand_in(a) for a in audio]}
    return request


def _placeholder_mismatch(request: dict, variant: str) -> str | None:
    """Why the request's audio placeholders and audio files disagree, or None. Checked before any audio is loaded,
    so this category is told apart from other prompt errors without parsing the processor's messages."""
    v1 = variant == QWEN_AUDIO_V1
    if "prompt" in request:
        prompt, audio = request["prompt"], request.get("audio")
        if v1 and audio is None:  # v1 loads the paths written inside its <audio>...</audio> spans
            return None
        n = len(v1_extract_audio_paths(prompt)) if v1 else prompt.count(AUDIO_TOKEN)
        what, k = ("<audio>...</audio> spans" if v1 else f"{AUDIO_TOKEN} placeholders"), len(audio or [])
        return None if n == k else f"the prompt has {n} {what} but {k} audio files; give one file per placeholder"
    for i, m in enumerate([] if v1 else request.get("messages") or []):
        content = m.get("content")
        texts = (
            [content]
            if isinstance(content, str)
            else [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
        )
        if any(AUDIO_TOKEN in t for t in texts):
            return (
                f"message {i} has a literal {AUDIO_TOKEN} in its text with no audio file for it; attach audio "
                "as {'type': 'audio', 'audio': path} parts instead"
            )
    return None


def pair_fingerprint(pairs: Sequence[PreparedPair]) -> str:
    """sha256 over ids, token ids, prompt/completion boundaries and mel lengths of all pairs, in order: the key of
    cached reference log-probs. Mel values are not hashed (float rounding may differ between hosts, which must agree
    on the key), so an audio file re-encoded in place at the same length keeps its fingerprint."""
    h = hashlib.sha256(b"qwen-audio-jax/pairs/v1\n")
    for p in pairs:
        for side, r in (("chosen", p.chosen), ("rejected", p.rejected)):
            rec = (
                None
                if r is None
                else [[int(t) for t in r.token_ids], r.num_prompt_tokens, [int(n) for n in r.mel_lengths]]
            )
            h.update(json.dumps([p.id, side, rec], separators=(",", ":")).encode())
            h.update(b"\n")
    return h.hexdigest()
