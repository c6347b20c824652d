"""Corpus throughput as a user runs it: `qwen-audio-jax generate` end to end in a fresh process vs transformers
over the same requests in batches of 8 sorted by length, in one already loaded process. One JSON line.

The corpus (--requests, default 128): chat questions about one clip, two clips in one turn, base-model caption
prompts, the asr / s2tt / ser / vsc / caption task presets and text-only chats, over the fixture clips cut into
1-15 s pieces (synthetic audio where ../shared is absent), each request with its own `max_new_tokens` drawn
with a fixed seed between 4 and 256, so output lengths vary as on a real corpus. Greedy, fp32, CPU.

Our side: the CLI over a request file of wav paths, twice in fresh processes: with an empty persistent
compilation cache (a first run) and with the cache the first run left (every later run). Each time covers
start-up, model load, compilation or cache loads, audio decoding, features, generation and writing.
The reference: transformers' Qwen2AudioForConditionalGeneration, loaded once (not timed); per batch of 8 the
audio is read (librosa, 16 kHz), `Qwen2AudioProcessor` builds the inputs, and `generate` runs to the batch's
largest budget (each row is then cut to its own budget and first stop id). Tokens are compared request by
request.

    python benchmarks/throughput.py [--requests 128] [--batch-size 8] [--reference-requests N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import STOP, build_model, fixture_audio, machine, run_cli

PIECES = [
    ("librispeech_1272_16k.flac", 10.0),
    ("glass_breaking_48k_stereo.mp3", 4.0),
    ("spanish_48k.mp3", 10.0),
    ("librispeech_1089_24k.wav", 12.0),
    ("chongqing_dialect_zh.wav", 9.0),
    ("music_97s_16k.wav", 90.0),
    ("librispeech_1272_middle_classes.wav", 0.9),
]
QUESTIONS = [
    "What does the speaker say?",
    "Describe the sound.",
    "What is the mood of this audio?",
    "Is there music? Answer briefly.",
    "Which language is spoken?",
    "Summarise the audio in detail.",
]


def make_corpus(work: Path, n: int, seed: int = 0) -> list[dict]:
    """n varied requests over clips written as wav files under work/clips."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    clips = []
    (work / "clips").mkdir(parents=True)
    for i in range(max(16, n // 4)):
        name, total = PIECES[i % len(PIECES)]
        seconds = float(min(total, rng.uniform(1.0, 15.0)))
        wav, _ = fixture_audio(name, seconds, float(rng.uniform(0, max(total - seconds, 0))), seed=i)
        path = work / "clips" / f"c{i:03d}.wav"
        sf.write(path, wav, 16000)
        clips.append(str(path))
    requests = []
    for i in range(n):
        a, b = clips[int(rng.integers(len(clips)))], clips[int(rng.integers(len(clips)))]
        kind = i % 6
        if kind == 0:
            r = {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "audio", "audio": a}, {"type": "text", "text": QUESTIONS[i % 6]}],
                    }
                ]
            }
        elif kind == 1:
            r = {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "audio", "audio": a},
                            {"type": "audio", "audio": b},
                            {"type": "text", "text": "Compare the two clips."},
                        ],
                    }
                ]
            }
        elif kind == 2:
            r = {"prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:", "audio": [a]}
        elif kind == 3:
            r = {"task": ["asr", "s2tt", "ser", "vsc", "caption"][i % 5], "audio": a, "target": "de"}
        elif kind == 4:
            r = {"messages": [{"role": "user", "content": "Write a short poem about listening."}]}
        else:
            r = {
                "messages": [
                    {"role": "system", "content": "You are a careful listener."},
                    {
                        "role": "user",
                        "content": [{"type": "audio", "audio": a}, {"type": "text", "text": QUESTIONS[(i + 3) % 6]}],
                    },
                ]
            }
        requests.append({"id": f"q{i:04d}", **r, "max_new_tokens": int(rng.integers(4, 257))})
    return requests


def reference(hf, model_dir: Path, requests: list[dict], batch: int) -> tuple[float, dict[str, list[int]]]:
    """transformers over the requests in batches of `batch` sorted by prompt length; (seconds, id -> tokens)."""
    import librosa
    import torch
    from transformers import Qwen2AudioProcessor, Qwen2TokenizerFast, WhisperFeatureExtractor

    from qwen_audio_jax.jobs.generate import normalise_request
    from qwen_audio_jax.text.chat_template import audio_parts, render_chat
    from qwen_audio_jax.text.processor import Processor

    ours = Processor.from_model_dir(model_dir)  # only to order by length, as the benchmark's batches are sorted
    tok = Qwen2TokenizerFast.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    proc = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok)
    forms = []
    for r in requests:
        req = normalise_request(
            {k: v for k, v in r.items() if k != "max_new_tokens"},
            chat=ours.is_chat,
            v1=False,
            job="generate",
            allowed=frozenset(r),
        )
        if "messages" in req:
            text, paths = render_chat(req["messages"]), audio_parts(req["messages"])
        else:
            text, paths = req["prompt"], req["audio"]
        forms.append((r["id"], text, paths, r["max_new_tokens"], ours.prepare(req).num_tokens))
    forms.sort(key=lambda f: f[4])
    out: dict[str, list[int]] = {}
    t0 = time.perf_counter()
    for start in range(0, len(forms), batch):
        group = forms[start : start + batch]
        audio = [librosa.load(p, sr=16000)[0] for _, _, paths, _, _ in group for p in paths]
        inputs = proc(
            text=[g[1] for g in group], audio=audio or None, sampling_rate=16000, return_tensors="pt", padding=True
        )
        budget = max(g[3] for g in group)
        with torch.no_grad():
            gen = hf.generate(
                **inputs, max_new_tokens=budget, do_sample=False, eos_token_id=list(STOP), pad_token_id=151643
            )
        new = gen[:, inputs["input_ids"].shape[1] :].tolist()
        for (rid, _, _, n, _), row in zip(group, new):
            row = row[:n]
            end = next((i + 1 for i, t in enumerate(row) if t in STOP), len(row))
            out[rid] = row[:end]
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="our decode slots (the reference's batch is 8)")
    ap.add_argument(
        "--reference-requests",
        type=int,
        default=None,
        help="time the reference on the first N requests only and scale (default: all)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qaj-throughput-"))
    hf, model_dir = build_model(work)
    requests = make_corpus(work, args.requests)
    (work / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    argv = [
        "generate",
        "--model",
        str(model_dir),
        "--input",
        str(work / "requests.jsonl"),
        "--max-new-tokens",
        "256",
        "--batch-size",
        str(args.batch_size),
        "--no-progress",
        "--compilation-cache",
        str(work / "xla"),
    ]
    cold_s, cold = run_cli(argv + ["--output", str(work / "cold.jsonl")])
    warm_s, warm = run_cli(argv + ["--output", str(work / "warm.jsonl")])
    ours = {r["id"]: r["token_ids"] for r in map(json.loads, (work / "warm.jsonl").read_text().splitlines())}

    subset = requests[: args.reference_requests] if args.reference_requests else requests
    ref_s, ref = reference(hf, model_dir, subset, 8)
    ref_s *= len(requests) / len(subset)
    same = sum(ours[k] == v for k, v in ref.items())
    n = len(requests)
    result = {
        "benchmark": "throughput",
        "requests": n,
        "new_tokens_total": sum(len(v) for v in ours.values()),
        "max_new_tokens_range": [4, 256],
        "our_slots": args.batch_size,
        "identical_tokens": f"{same}/{len(ref)}",
        "jax_cli_warm_cache": {
            "seconds": round(warm_s, 1),
            "requests_per_s": round(n / warm_s, 3),
            "first_result_s": warm["first_result_s"],
            "load_s": warm["load_s"],
            "compile_s": warm["compile_s"],
            "compiled_programs": warm["compiled_programs"],
            "device_idle_fraction": warm["input_wait_fraction"],
        },
        "jax_cli_cold_cache": {
            "seconds": round(cold_s, 1),
            "requests_per_s": round(n / cold_s, 3),
            "first_result_s": cold["first_result_s"],
            "compile_s": cold["compile_s"],
            "compiled_programs": cold["compiled_programs"],
            "device_idle_fraction": cold["input_wait_fraction"],
        },
        "reference": {
            "seconds": round(ref_s, 1),
            "requests_per_s": round(n / ref_s, 3),
            "timed_requests": len(subset),
            "batch": 8,
        },
        "speedup_warm": round(ref_s / warm_s, 2),
        "speedup_cold": round(ref_s / cold_s, 2),
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
