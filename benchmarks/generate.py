"""Batch generation on one batch: the JAX engine vs transformers `generate` on the same weights and inputs, in
one run, in process (both sides loaded and warmed up), plus the CLI end to end in a fresh process.

The benchmark model (benchmarks/_common.py: ~142M parameters, real 156,032 vocab, random weights), 8 chat
requests over real clips of 4-10 s (fixture clips cut to length; synthetic audio when ../shared is absent),
128 new tokens each, greedy with min_new_tokens=128 (both sides do exactly the same steps), fp32 CPU.

Reported per side (median of --repeats runs after one warm-up): seconds and requests/s for the batch, prefill
seconds, decode tokens/s, audio-encoder seconds; the CLI's wall time (fresh process, warm compilation cache);
the ratios. One JSON line.

    python benchmarks/generate.py [--repeats 3] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import STOP, build_model, fixture_audio, machine, run_cli

CLIPS = [
    ("librispeech_1272_16k.flac", 5.9),
    ("glass_breaking_48k_stereo.mp3", 4.05),
    ("spanish_48k.mp3", 6.0),
    ("librispeech_1089_24k.wav", 9.0),
    ("chongqing_dialect_zh.wav", 8.0),
    ("music_97s_16k.wav", 10.0),
    ("librispeech_1089_24k.wav", 4.5),
    ("music_97s_16k.wav", 7.0),
]
PROMPTS = [
    "What does the speaker say?",
    "Describe the sound.",
    "Translate the speech into English.",
    "Transcribe the speech.",
    "Which dialect is this?",
    "What instruments do you hear?",
    "Summarise the audio.",
    "Describe the mood.",
]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation for JAX, allocator warm-up for torch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    n_new = args.new_tokens

    import jax
    import jax.numpy as jnp
    import soundfile as sf
    import torch

    from qwen_audio_jax import api
    from qwen_audio_jax.generation.engine import Engine
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.model.params import build_module, count_params
    from qwen_audio_jax.text.processor import collate

    work = Path(tempfile.mkdtemp(prefix="qaj-gen-bench-"))
    hf, model_dir = build_model(work)
    model = api.load(model_dir)
    audio, real = zip(*(fixture_audio(n, s, 1.0 * (i % 3), seed=i) for i, (n, s) in enumerate(CLIPS)))
    requests = []
    for i, (a, p) in enumerate(zip(audio, PROMPTS)):
        sf.write(work / f"c{i}.wav", a, 16000)
        requests.append(
            {
                "id": str(i),
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "audio", "audio": str(work / f"c{i}.wav")}, {"type": "text", "text": p}],
                    }
                ],
            }
        )
    prepared = [model.processor.prepare_messages(r["messages"]) for r in requests]

    # ---- JAX, in process ---------------------------------------------------------------------------------------
    engine = Engine(model.config, model.params, batch_size=8)
    opts = GenerationOptions(max_new_tokens=n_new, min_new_tokens=n_new)

    def ours():
        before = (engine.stats.prefill_s, engine.stats.decode_s)
        out = engine.generate(prepared, opts)
        ours.prefill_s, ours.decode_s = engine.stats.prefill_s - before[0], engine.stats.decode_s - before[1]
        return out

    jax_total = median_time(ours, args.repeats)
    module = build_module(model.config)
    batch = collate(prepared, pad_id=151643)
    a = engine.buckets.inference_mel_frames(int(batch.mel_lengths.max()))
    encode = jax.jit(lambda p, m, n: module.apply({"params": p}, m, n, method="encode_audio")[0])
    mel_j, len_j = jnp.asarray(batch.mel[:, :, :a]), jnp.asarray(batch.mel_lengths)
    jax_encode = median_time(lambda: encode(model.params, mel_j, len_j).block_until_ready(), args.repeats)

    # ---- JAX, the CLI in a fresh process (the cache warmed by a first run) -----------------------------------------
    (work / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    argv = [
        "generate",
        "--model",
        str(model_dir),
        "--input",
        str(work / "requests.jsonl"),
        "--max-new-tokens",
        str(n_new),
        "--min-new-tokens",
        str(n_new),
        "--batch-size",
        "8",
        "--no-progress",
        "--compilation-cache",
        str(work / "xla"),
    ]
    run_cli(argv + ["--output", str(work / "cold.jsonl")])
    cli_s, cli = run_cli(argv + ["--output", str(work / "warm.jsonl")])

    # ---- transformers, in process ------------------------------------------------------------------------------
    hf_inputs = dict(
        input_ids=torch.from_numpy(batch.tokens).long(),
        attention_mask=torch.from_numpy(batch.attention_mask).long(),
        input_features=torch.from_numpy(batch.mel),
        feature_attention_mask=(torch.arange(3000)[None] < torch.from_numpy(batch.mel_lengths)[:, None]).long(),
    )

    def hf_generate(k):
        with torch.no_grad():
            return hf.generate(
                **hf_inputs,
                max_new_tokens=k,
                min_new_tokens=k,
                do_sample=False,
                eos_token_id=list(STOP),
                pad_token_id=151643,
            )

    ref_total = median_time(lambda: hf_generate(n_new), args.repeats)
    ref_prefill = median_time(lambda: hf_generate(1), args.repeats)

    def hf_encode():
        with torch.no_grad():
            lengths = hf_inputs["feature_attention_mask"].sum(-1)
            feat = (lengths - 1) // 2 + 1
            mask = torch.zeros(len(lengths), 1, 1500, 1500)
            mask.masked_fill_((torch.arange(1500)[None] >= feat[:, None])[:, None, None, :], float("-inf"))
            hf.multi_modal_projector(hf.audio_tower(hf_inputs["input_features"], attention_mask=mask).last_hidden_state)

    ref_encode = median_time(hf_encode, args.repeats)

    want = hf_generate(n_new)[:, batch.tokens.shape[1] :].tolist()
    same = [o.token_ids for o in engine.generate(prepared, opts)] == want
    cli_tokens = {r["id"]: r["token_ids"] for r in map(json.loads, (work / "warm.jsonl").read_text().splitlines())}
    decode_tokens = 8 * (n_new - 1)
    result = {
        "benchmark": "generate",
        "params": count_params(model.params),
        "batch": 8,
        "new_tokens": n_new,
        "audio": "fixtures" if all(real) else "synthetic",
        "clip_seconds": [round(len(x) / 16000, 2) for x in audio],
        "same_tokens_as_reference": same and [cli_tokens[str(i)] for i in range(8)] == want,
        "jax": {
            "seconds": round(jax_total, 3),
            "requests_per_s": round(8 / jax_total, 3),
            "decode_tokens_per_s": round(decode_tokens / ours.decode_s, 1),
            "prefill_s": round(ours.prefill_s, 3),
            "audio_encoder_s": round(jax_encode, 4),
            "mel_frames_encoded": a,
        },
        "jax_cli": {
            "seconds": round(cli_s, 2),
            "load_s": cli["load_s"],
            "compile_s": cli["compile_s"],
            "first_result_s": cli["first_result_s"],
            "device_idle_fraction": cli["input_wait_fraction"],
        },
        "reference": {
            "seconds": round(ref_total, 3),
            "requests_per_s": round(8 / ref_total, 3),
            "decode_tokens_per_s": round(decode_tokens / (ref_total - ref_prefill), 1),
            "prefill_s": round(ref_prefill, 3),
            "audio_encoder_s": round(ref_encode, 4),
            "mel_frames_encoded": 3000,
        },
        "speedup_in_process": round(ref_total / jax_total, 2),
        "speedup_cli_vs_reference_in_process": round(ref_total / cli_s, 2),
        "speedup_decode": round((decode_tokens / ours.decode_s) / (decode_tokens / (ref_total - ref_prefill)), 2),
        "speedup_prefill": round(ref_prefill / ours.prefill_s, 2),
        "speedup_audio_encoder": round(ref_encode / jax_encode, 2),
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
