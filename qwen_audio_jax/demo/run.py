"""`qwen-audio-jax demo`: the bundled model answers about the bundled held-out clips, or about the user's own file.

Everything goes through the public paths a user's own run takes: `api.load` of a model dir, the `generate` job
(continuous batching over the jitted prefill/decode programs) through the one batch-job driver, and the demo
task's scorer. The model and the clips come with the package, so nothing is downloaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from qwen_audio_jax.choices import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LONG_AUDIO,
    DEMO_ASK_MAX_NEW_TOKENS,
    DEMO_MAX_NEW_TOKENS,
)
from qwen_audio_jax.demo.bundle import DEMO_CLIPS, DEMO_MODEL, DemoItem, load_demo_items
from qwen_audio_jax.demo.scoring import SPEECH_KINDS, score_answers, words
from qwen_audio_jax.errors import AudioError

__all__ = ["run_demo", "answer_audio", "recorded_figures", "DEFAULT_QUESTION", "TRAINED_MAX_SECONDS"]

DEFAULT_QUESTION = "What sound is this?"  # answered with a transcript for speech, a name for other sounds
TRAINED_MAX_SECONDS = 2.5  # the demo corpus's longest clip (scripts/make_demo_data.py MAX_SECONDS)
FIGURES_FILE = "heldout_figures.json"  # written next to the model by scripts/train_demo_model.py


def recorded_figures(model_dir: Path = DEMO_MODEL) -> dict | None:
    """The figures recorded when the model was trained: {"heldout": ..., "demo_clips": ...} (score_answers dicts)."""
    path = Path(model_dir) / FIGURES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _job(model, batch_size: int, max_new_tokens: int, base_dir: Path | None = None):
    from qwen_audio_jax.generation.engine import EngineOptions
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.jobs.generate import GenerateJob

    return GenerateJob(
        model, GenerationOptions(max_new_tokens=max_new_tokens), EngineOptions(batch_size=batch_size), base_dir=base_dir
    )


def _load(model_dir: Path, log: Callable[[str], None], long_audio: str = DEFAULT_LONG_AUDIO):
    from qwen_audio_jax import api
    from qwen_audio_jax.model.params import count_params

    start = time.perf_counter()
    model = api.load(model_dir, long_audio=long_audio)
    d, a = model.config.decoder, model.config.audio
    log(
        f"model: {model_dir} ({count_params(model.params) / 1e6:.1f}M params: {a.num_layers}-layer audio encoder, "
        f"{d.num_layers}-layer decoder of width {d.hidden_size}; loaded in {time.perf_counter() - start:.1f} s)"
    )
    return model


def _compiling(log: Callable[[str], None]) -> tuple[int, int, float]:
    """Says, before the first device call, that the first run compiles and where the programs are kept; returns
    the compile counters to report against (`_compiled`)."""
    import jax

    from qwen_audio_jax.runtime import track_compilations

    cache = jax.config.jax_compilation_cache_dir
    if cache:
        log(f"compiling the model's programs, or reading them from the compilation cache {cache} (after a first run)")
    else:
        log("compiling the model's programs (no compilation cache: every run compiles them)")
    stats = track_compilations()
    return stats.compiled, stats.cache_hits, stats.seconds


def _compiled(before: tuple[int, int, float]) -> str:
    """What compiling cost since `before`: "5.2 s compiling 8 programs" or "8 programs from the cache"."""
    from qwen_audio_jax.runtime import track_compilations

    stats = track_compilations()
    compiled, hits = stats.compiled - before[0], stats.cache_hits - before[1]
    if compiled:
        cached = f", {hits} from the compilation cache" if hits else ""
        return f"{stats.seconds - before[2]:.1f} s compiling {compiled} programs{cached}"
    return f"its {hits} programs read from the compilation cache" if hits else "nothing compiled"


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def describe_figures(figures: dict) -> str:
    """One line: the WER of each spoken kind and the accuracy on the sounds."""
    parts = [
        f"{kind} WER {_percent(figures['wer'][kind])} ({figures['reference_words'][kind]} words)"
        for kind in SPEECH_KINDS
        if kind in figures["wer"]
    ]
    if "sounds" in figures["accuracy"]:
        parts.append(f"sounds {_percent(figures['accuracy']['sounds'])} right ({figures['answers']['sounds']} answers)")
    if "sound_class" in figures:
        c = figures["sound_class"]
        parts.append(f"sound class {_percent(c['accuracy'])} right ({c['answers']} answers)")
    return " · ".join(parts)


def _show(i: int, n: int, item: DemoItem, result: dict, log: Callable[[str], None]) -> bool:
    answer = result["text"]
    ok = answer is not None and words(answer) == words(item.expected)
    log(f"[{i + 1:{len(str(n))}d}/{n}] {item.clip}  ({item.kind}, {item.noise} background)")
    log(f"    asked:    {item.question}")
    log(f"    expected: {item.expected}")
    shown = ("error: " + result["error"]) if answer is None else (answer or "(nothing)")
    log(f"    answer:   {shown}  {'✓' if ok else '✗'}")
    return ok


def run_demo(
    *,
    model_dir: str | Path = DEMO_MODEL,
    clips_dir: str | Path = DEMO_CLIPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEMO_MAX_NEW_TOKENS,
    output: str | Path | None = None,
    overwrite: bool = False,
    long_audio: str = DEFAULT_LONG_AUDIO,
    log: Callable[[str], None] = print,
) -> dict:
    """Greedy answers to every bundled held-out request, printed with the expected answer, then the figures.

    Returns {"figures": score_answers(...), "results": [...], "same_as_recorded": n, "seconds": s}. With
    `output`, the results (plus "expected" and "kind") are written as JSON lines (never over a file that is not
    our own results)."""
    from qwen_audio_jax.checkpoint.safe_write import check_result_file
    from qwen_audio_jax.jobs.driver import run_list

    start = time.perf_counter()
    if output is not None:
        output = check_result_file(output, input_path=None, resume=False, overwrite=overwrite)
    items = load_demo_items(Path(clips_dir))
    model = _load(Path(model_dir), log, long_audio)
    log(f"asking it about {len(items)} held-out clips it never heard in training (greedy, batches of {batch_size})")
    before = _compiling(log)
    t = time.perf_counter()
    results = run_list(
        _job(model, batch_size, max_new_tokens, Path(clips_dir).absolute()), [it.request for it in items]
    )
    generate_s = time.perf_counter() - t
    for i, (item, result) in enumerate(zip(items, results, strict=True)):
        _show(i, len(items), item, result, log)
    figures = score_answers((it.kind, it.expected, r["text"]) for it, r in zip(items, results, strict=True))
    same = sum(r["text"] == it.trained_model_output for it, r in zip(items, results, strict=True))
    log(f"these {len(items)} clips: {describe_figures(figures)}  ({generate_s:.1f} s: {_compiled(before)})")
    recorded = recorded_figures(Path(model_dir))
    if recorded is not None:
        log(
            f"full held-out split when trained ({recorded['heldout_requests']} requests): "
            f"{describe_figures(recorded['heldout'])}"
        )
    if output is not None:
        with open(output, "w", encoding="utf-8") as f:
            for item, r in zip(items, results, strict=True):
                f.write(json.dumps({**r, "expected": item.expected, "kind": item.kind}) + "\n")
        log(f"results: {output}")
    return {"figures": figures, "results": results, "same_as_recorded": same, "seconds": time.perf_counter() - start}


def answer_audio(
    audio: str | Path,
    question: str | None = None,
    *,
    model_dir: str | Path = DEMO_MODEL,
    max_new_tokens: int = DEMO_ASK_MAX_NEW_TOKENS,
    long_audio: str = DEFAULT_LONG_AUDIO,
    batch_size: int = DEFAULT_BATCH_SIZE,
    log: Callable[[str], None] = print,
) -> str:
    """The model's answer about one audio file (default question: DEFAULT_QUESTION); logged last, returned.
    `batch_size` sizes the engine as `run_demo` does, so either one's compiled programs serve the other."""
    from qwen_audio_jax.audio.constants import SAMPLE_RATE
    from qwen_audio_jax.audio.load import load_audio
    from qwen_audio_jax.jobs.driver import run_list

    wav = load_audio(str(audio))  # AudioError naming the file for a missing / unreadable one
    seconds = len(wav) / SAMPLE_RATE
    model = _load(Path(model_dir), log, long_audio)
    if seconds > TRAINED_MAX_SECONDS:
        log(
            f"note: {audio} is {seconds:.1f} s long; the demo model only heard clips of up to "
            f"{TRAINED_MAX_SECONDS} s, so expect a poor answer (a converted Qwen2-Audio checkpoint handles 30 s)."
        )
    question = question or DEFAULT_QUESTION
    content = [{"type": "audio", "audio": str(audio)}, {"type": "text", "text": question}]  # named in warnings
    request = {"id": "audio", "messages": [{"role": "user", "content": content}]}
    before = _compiling(log)
    t = time.perf_counter()
    [result] = run_list(_job(model, batch_size, max_new_tokens), [request])
    if result["error"] is not None:
        raise AudioError(f"{audio}: {result['error']}")
    log(f"answered in {time.perf_counter() - t:.1f} s ({_compiled(before)})")
    log(f"asked about {audio} ({seconds:.1f} s): {question}")
    log(result["text"])
    return result["text"]
