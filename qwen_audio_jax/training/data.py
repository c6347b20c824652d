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
inside an `<|AUDIO|>` span, and a silently shortened completion would bias the preference. The pool works a
window of examples ahead, and a text that cannot fit `max_length` is dropped before it is tokenized, so memory
follows the window, not the file (a training run holds its file as an index: training/data_file.py).
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from qwen_audio_jax.audio.clips import kept_samples
from qwen_audio_jax.audio.decoder_warmup import realize_decoder_types
from qwen_audio_jax.config import QWEN_AUDIO_V1
from qwen_audio_jax.errors import AudioError, ConfigError, DataError, QwenAudioError
from qwen_audio_jax.jsonl import iter_lines, open_jsonl
from qwen_audio_jax.text.budget import TooLongError
from qwen_audio_jax.text.chat_template import v1_extract_audio_paths
from qwen_audio_jax.text.processor import PreparedRequest, Processor
from qwen_audio_jax.text.tokenizer import AUDIO_TOKEN
from qwen_audio_jax.training.fingerprint import PairHasher, pair_fingerprint
from qwen_audio_jax.training.formats import parse_record
from qwen_audio_jax.training.stand_in import clip_samples_16k, with_stand_in_audio

__all__ = [
    "PreferenceExample",
    "PreparedPair",
    "ValidationReport",
    "read_examples",
    "scan_examples",
    "validate_examples",
    "validation_outcomes",
    "clip_samples_16k",
    "pair_fingerprint",
    "PairHasher",
    "MAX_ARRAY_BYTES",
]

# A JSON array file is parsed whole (JSON has no way to read one element at a time); past this size it must be
# JSON Lines, which is read a line at a time (`jq -c '.[]' data.json > data.jsonl`).
MAX_ARRAY_BYTES = 256 * 2**20
# Examples a validation pool works ahead of the one it hands out: enough to keep its threads busy.
VALIDATION_WINDOW = 64


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
    (examples, [(id, error sentence)] of the records that could not be used). A training run holds its file as an
    index instead (training/data_file.py).

    Raises DataError only for the file as a whole (missing, not UTF-8, a JSON array that does not parse)."""
    examples, errors = [], []
    for example, error, _ in scan_examples(path, preference):
        if error is not None:
            errors.append(error)
        else:
            examples.append(example)
    return examples, errors


def scan_examples(
    path: str | Path, preference: bool
) -> Iterator[tuple[PreferenceExample | None, tuple[str, str] | None, tuple[int, int, int] | None]]:
    """Every record of a training file, parsed and checked one at a time: (example, None, where) or (None, (id,
    error sentence), None); `where` is a JSON Lines record's (line number, byte offset, size), None in an array."""
    path = Path(path)
    base_dir = path.absolute().parent
    seen: dict[str, int] = {}  # id -> its record number: the only thing held per record
    for n, where, rec, span in _records(path):
        rid = example_id(rec, path, n)
        try:
            if isinstance(rec, DataError):  # a line that is not JSON
                raise rec
            if rid in seen:
                first = f"{where.split()[0]} {seen[rid]}"
                raise DataError(f"duplicate id {rid!r} (first used on {first}); give every record its own id")
            request, chosen, rejected = parse_record(rec, base_dir, preference)
        except DataError as e:
            yield None, (rid, f"{path.name} {where}: {e}"), None
            continue
        seen[rid] = n
        yield PreferenceExample(rid, request, chosen, rejected), None, span


def example_id(rec, path: Path, n: int) -> str:
    """A record's id: its own "id", else FILESTEM-N (N its 1-based record number)."""
    rid = rec.get("id") if isinstance(rec, dict) else None
    return f"{path.stem}-{n}" if rid is None or rid == "" else str(rid)


def _records(path: Path) -> Iterator[tuple[int, str, object, tuple[int, int, int] | None]]:
    """(1-based record number, "line N" / "record N", parsed JSON or a DataError for a line that does not parse,
    (line number, byte offset, size) of a JSON Lines record or None)."""
    open_jsonl(path, "data file")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):  # a JSON array, as LLaMA-Factory ships its datasets
        size = path.stat().st_size
        if size > MAX_ARRAY_BYTES:
            raise DataError(
                f"{path}: a JSON array of {size / 2**20:.0f} MiB; arrays are read whole, so over "
                f"{MAX_ARRAY_BYTES // 2**20} MiB write it as JSON Lines, one record a line "
                f"(`jq -c '.[]' {path.name} > {path.stem}.jsonl`)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason}); save the data file as UTF-8") from None
        except (ValueError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            raise DataError(
                f"{path}: the JSON array does not parse ({why}); fix it or write one record a line"
            ) from None
        yield from ((i, f"record {i}", rec, None) for i, rec in enumerate(data, 1))
        return
    # JSON Lines, one line at a time: a bad byte, a lone surrogate or an over-long line drops that record only.
    for line in iter_lines(path, "data file"):
        n = line.number
        rec = line.value if line.error is None else DataError(line.error.split(": ", 1)[1])
        yield n, f"line {n}", rec, (n, line.offset, line.size)


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
    pairs = []
    for ex, outcome in validation_outcomes(examples, processor, max_length, completion_suffix, keep_mels, workers):
        if isinstance(outcome, PreparedPair):
            pairs.append(outcome)
        else:
            report.add(outcome[0], ex.id, outcome[1])
    report.kept = len(pairs)
    check_some_kept(report)
    return pairs, report


def check_some_kept(report: ValidationReport) -> None:
    """Raises DataError when validation kept no example (the message: the report's headline, the first problem)."""
    if not report.kept:
        first = next((f"{s[0][0]}: {s[0][1]}" for s in report.samples.values() if s), "the file holds no records")
        raise DataError(f"every example was invalid: {report.headline()}; first problem: {first}")


def validation_outcomes(
    examples: Iterable[PreferenceExample],
    processor: Processor,
    max_length: int,
    completion_suffix: str = "",
    keep_mels: bool = True,
    workers: int = 8,
) -> Iterator[tuple[PreferenceExample, PreparedPair | tuple[str, str]]]:
    """(example, its PreparedPair or (report category, message)) for every example, in input order, prepared on a
    thread pool at most VALIDATION_WINDOW examples ahead (see `validate_examples` for the arguments)."""
    v1 = processor.variant == QWEN_AUDIO_V1
    one = functools.partial(
        _validate_one, processor=processor, max_length=max_length, suffix=completion_suffix, v1=v1, cheap=not keep_mels
    )
    pending: collections.deque = collections.deque()
    realize_decoder_types()  # before the pool: soundfile's cffi types are not safe to build concurrently
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for ex in examples:
            pending.append((ex, pool.submit(one, ex)))
            if len(pending) >= VALIDATION_WINDOW:
                ex, fut = pending.popleft()
                yield ex, fut.result()
        while pending:
            ex, fut = pending.popleft()
            yield ex, fut.result()


def _validate_one(ex: PreferenceExample, *, processor, max_length, suffix, v1, cheap):
    """One example -> its PreparedPair, or (report category, message) saying why it is dropped."""
    mismatch = _placeholder_mismatch(ex.request, processor.variant)
    if mismatch:
        return "audio_mismatch", mismatch
    completions = [ex.chosen] + ([] if ex.rejected is None else [ex.rejected])
    try:
        cap = kept_samples(processor.long_audio, max_length)  # a stand-in clip never longer than the policy keeps
        request = with_stand_in_audio(ex.request, v1, cap) if cheap else ex.request
        prepared = processor.prepare_completions(request, [c + suffix for c in completions], max_tokens=max_length)
    except TooLongError as e:  # refused from its length alone, before it was tokenized
        return "too_long", str(e)
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
