"""Benchmark manifests: one JSON object per line describing an audio clip and its reference.

    {"id": "1089-134686-0000", "audio": "test-clean/1089/134686/1089-134686-0000.flac",
     "reference": "HE HOPED THERE WOULD BE STEW FOR DINNER ...", "source": "librispeech_test_clean", "language": "en",
     "prompt": "Detect the language and recognize the speech: <|en|>"}

Optional keys: "target_language" (required for s2tt), "question" (required for aqa), "prompt". For caption the
reference may be a list of captions. Reading is tolerant: a bad line (not UTF-8, not JSON, a missing, mistyped or
unknown field, a repeated id) becomes a ``ManifestProblem`` that is reported and counted, and the rest is read; only a
missing file, or one without a single usable line, raises ``DataError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qwen_audio_jax.choices import EVAL_TASKS
from qwen_audio_jax.errors import ConfigError, DataError
from qwen_audio_jax.jsonl import iter_jsonl

__all__ = ["TASKS", "ManifestEntry", "ManifestProblem", "check_task", "read_jsonl_objects", "read_manifest"]

TASKS = EVAL_TASKS

_REQUIRED = ("id", "audio", "reference", "source", "language")
_OPTIONAL = ("target_language", "prompt", "question")
_REQUIRED_BY_TASK = {"s2tt": ("target_language",), "aqa": ("question",)}
# keys of the official Qwen *_eval.jsonl files, mapped to ours, to make the "unknown key" message useful
_OFFICIAL_NAMES = {"gt": "reference", "lang": "language", "tgt_lang": "target_language"}


@dataclass(frozen=True)
class ManifestEntry:
    """One benchmark item. ``audio`` is absolute (or a URL) once read; ``reference`` is a tuple only for caption."""

    id: str
    audio: str
    reference: str | tuple[str, ...]
    source: str
    language: str
    target_language: str | None = None
    prompt: str | None = None
    question: str | None = None


@dataclass(frozen=True)
class ManifestProblem:
    """A line that could not be used: 1-based ``line``, the id if one was read, and a one-sentence message."""

    line: int
    id: str | None
    message: str

    def to_json(self) -> dict:
        return {"line": self.line, "id": self.id, "message": self.message}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"Unknown evaluation task {task!r}; use one of {', '.join(TASKS)}.")


def read_jsonl_objects(path: str | Path, what: str) -> Iterator[tuple[int, dict | None, ManifestProblem | None]]:
    """Yields (line number, object, None) or (line number, None, problem) for every non-blank line of ``path``
    (qwen_audio_jax/jsonl.py: a bad byte spoils one line, not the file). ``what`` names the file kind in the
    missing-file error ("manifest", "predictions file")."""
    for n, obj, error in iter_jsonl(path, what):
        yield n, obj, None if error is None else ManifestProblem(n, None, error)


def _nonempty_str(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _resolve_audio(audio: str, base: Path) -> str:
    # Paths relative to the manifest are resolved against its directory, so a manifest and its clips can move together.
    if audio.startswith(("http://", "https://")) or os.path.isabs(audio):
        return audio
    return os.path.normpath(str(base / audio))


def _check_entry(obj: dict, task: str, name: str, n: int) -> str | None:
    """The first problem with a manifest object, as a message, or None."""
    for key in obj:
        if key not in _REQUIRED and key not in _OPTIONAL:
            hint = f" (rename it to {_OFFICIAL_NAMES[key]!r})" if key in _OFFICIAL_NAMES else ""
            allowed = ", ".join(_REQUIRED + _OPTIONAL)
            return f"{name} line {n} has an unknown key {key!r}{hint}; allowed keys are {allowed}."
    for key in _REQUIRED + _REQUIRED_BY_TASK.get(task, ()):
        if key not in obj or obj[key] is None:
            return f"{name} line {n} has no {key!r}; every {task} line needs it."
    for key in ("id", "audio", "source", "language") + _REQUIRED_BY_TASK.get(task, ()):
        if not _nonempty_str(obj[key]):
            return f"{name} line {n}: {key!r} must be a non-empty string; fix the value."
    for key in _OPTIONAL:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            return f"{name} line {n}: {key!r} must be a string or null; fix the value."
    ref = obj["reference"]
    if task == "caption":
        refs = [ref] if isinstance(ref, str) else ref
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            return f"{name} line {n}: 'reference' must be a caption or a non-empty list of captions; fix the value."
    elif not isinstance(ref, str):
        return f"{name} line {n}: 'reference' must be a string for {task}; fix the value."
    return None


def read_manifest(path: str | Path, task: str) -> tuple[list[ManifestEntry], list[ManifestProblem]]:
    """Reads a manifest for ``task``: (entries in file order, problems). See the module docstring for the format.

    Raises DataError if the file is missing or has no usable line (every line blank or bad).
    """
    check_task(task)
    path = Path(path)
    base = path.resolve().parent
    entries: list[ManifestEntry] = []
    problems: list[ManifestProblem] = []
    seen: dict[str, int] = {}
    for n, obj, problem in read_jsonl_objects(path, "manifest"):
        if problem is not None:
            problems.append(problem)
            continue
        rid = obj.get("id") if _nonempty_str(obj.get("id")) else None
        message = _check_entry(obj, task, path.name, n)
        if message is None and rid in seen:
            message = f"{path.name} line {n}: id {rid!r} is already used on line {seen[rid]}; ids must be unique."
        if message is not None:
            problems.append(ManifestProblem(n, rid, message))
            continue
        seen[rid] = n
        ref = obj["reference"]
        if task == "caption":
            ref = (ref,) if isinstance(ref, str) else tuple(ref)
        entries.append(
            ManifestEntry(
                id=rid,
                audio=_resolve_audio(obj["audio"], base),
                reference=ref,
                source=obj["source"],
                language=obj["language"],
                target_language=obj.get("target_language"),
                prompt=obj.get("prompt"),
                question=obj.get("question"),
            )
        )
    if not entries:
        detail = f" ({len(problems)} bad line(s); the first: {problems[0].message.rstrip('.')})" if problems else ""
        raise DataError(f"{path} has no usable manifest line{detail}; fix the file and run again.")
    return entries, problems
