"""Batch generation: JAX engine vs transformers `generate` on the same weights and inputs, in one run.

A ~140M-parameter Qwen2-Audio (real 156,032 vocab, d=384, 8 decoder + 4 encoder layers, random weights) is
built in transformers, saved, and converted with `qwen-audio-jax convert`. A batch of 8 real clips of 4-10 s
(fixture clips cut to length; synthetic audio when ../shared is absent) is prepared once, then both sides
generate 128 new tokens greedily (min_new_tokens=128, so both do exactly the same number of steps), fp32 CPU.

Reported per side (median of --repeats runs after one warm-up/compile run):
  end-to-end seconds and requests/s, audio-encoder seconds, prefill seconds, decode tokens/s;
and the ratios JAX/reference. One JSON line.

    python benchmarks/generate.py [--repeats 3] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = dict(audio_d=384, audio_layers=4, audio_heads=6, audio_ffn=1536, hidden=384, layers=8, heads=6, kv_heads=6,
            inter=1024, vocab=156032)
CLIPS = [("librispeech_1272_16k.flac", 5.9), ("glass_breaking_48k_stereo.mp3", 4.05), ("spanish_48k.mp3", 6.0),
         ("librispeech_1089_24k.wav", 9.0), ("chongqing_dialect_zh.wav", 8.0), ("music_97s_16k.wav", 10.0),
         ("librispeech_1089_24k.wav", 4.5), ("music_97s_16k.wav", 7.0)]


def batch_audio() -> tuple[list[np.ndarray], str]:
    from qwen_audio_jax.audio.load import load_audio
    from tests._paths import FIXTURE_AUDIO
    from tests._requests import synth_clip

    out, source = [], "fixtures"
    for i, (name, seconds) in enumerate(CLIPS):
        path = FIXTURE_AUDIO / name
        if path.exists():
            wav = load_audio(path)
            start = int(16000 * 1.0 * (i % 3)) if len(wav) > 16000 * (seconds + 3) else 0
            out.append(wav[start : start + int(seconds * 16000)])
        else:
            out.append(synth_clip(seconds, seed=i))
            source = "synthetic"
    return out, source


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
    import torch

    from qwen_audio_jax import api
    from qwen_audio_jax.conversion.hf_to_jax import convert
    from qwen_audio_jax.generation.engine import Engine
from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.model.params import build_module, count_params
    from qwen_audio_jax.text.processor import collate
    from tests._hf_models import TinySpec, build_hf_model
    from tests._model_dirs import PREPROCESSOR
    from qwen_audio_jax.bundled import write_tokenizer_dir

    work = Path(tempfile.mkdtemp(prefix="qaj-gen-bench-"))
    hf = build_hf_model(TinySpec("bench", **SPEC), seed=0)
    hf.save_pretrained(work / "hf")
    write_tokenizer_dir(work / "hf")
    (work / "hf" / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    convert(work / "hf", work / "jax", dtype="float32", progress=False, log=lambda m: None)
    model = api.load(work / "jax")
    n_params = count_params(model.params)

    audio, source = batch_audio()
    prompts = ["What does the speaker say?", "Describe the sound.", "Translate the speech into English.",
               "Transcribe the speech.", "Which dialect is this?", "What instruments do you hear?",
               "Summarise the audio.", "Describe the mood."]
    prepared = [model.processor.prepare_messages([{"role": "user", "content": [
        {"type": "audio", "audio": a}, {"type": "text", "text": p}]}]) for a, p in zip(audio, prompts)]
    stop = (151645, 151643)

    # ---- JAX ----------------------------------------------------------------------------------------------------
    engine = Engine(model.config, model.params, batch_size=8)
    opts = GenerationOptions(max_new_tokens=n_new, min_new_tokens=n_new, stop_ids=stop)
    jax_total = median_time(lambda: engine.generate(prepared, opts), args.repeats)
    jax_prefill, jax_decode = engine.last_timings["prefill_s"], engine.last_timings["decode_s"]
    module = build_module(model.config)
    batch = collate(prepared, pad_id=151643)
    a = engine.buckets.mel_frames(int(batch.mel_lengths.max()))
    encode = jax.jit(lambda p, m, n: module.apply({"params": p}, m, n, method="encode_audio")[0])
    mel_j, len_j = jnp.asarray(batch.mel[:, :, :a]), jnp.asarray(batch.mel_lengths)
    jax_encode = median_time(lambda: encode(model.params, mel_j, len_j).block_until_ready(), args.repeats)

    # ---- transformers ---------------------------------------------------------------------------------------------
    hf_inputs = dict(
        input_ids=torch.from_numpy(batch.tokens).long(), attention_mask=torch.from_numpy(batch.attention_mask).long(),
        input_features=torch.from_numpy(batch.mel),
        feature_attention_mask=(torch.arange(3000)[None] < torch.from_numpy(batch.mel_lengths)[:, None]).long(),
    )

    def hf_generate(k):
        with torch.no_grad():
            return hf.generate(**hf_inputs, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                               eos_token_id=list(stop), pad_token_id=151643)

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

    same = [o.token_ids for o in engine.generate(prepared, opts)] == hf_generate(n_new)[:, batch.tokens.shape[1]:].tolist()
    decode_tokens = 8 * (n_new - 1)
    result = {
        "benchmark": "generate",
        "params": n_params,
        "batch": 8,
        "new_tokens": n_new,
        "audio": source,
        "clip_seconds": [round(len(x) / 16000, 2) for x in audio],
        "same_tokens_as_reference": same,
        "jax": {"seconds": round(jax_total, 3), "requests_per_s": round(8 / jax_total, 3),
                "decode_tokens_per_s": round(decode_tokens / jax_decode, 1), "prefill_s": round(jax_prefill, 3),
                "audio_encoder_s": round(jax_encode, 4), "mel_frames_encoded": a},
        "reference": {"seconds": round(ref_total, 3), "requests_per_s": round(8 / ref_total, 3),
                      "decode_tokens_per_s": round(decode_tokens / (ref_total - ref_prefill), 1),
                      "prefill_s": round(ref_prefill, 3), "audio_encoder_s": round(ref_encode, 4),
                      "mel_frames_encoded": 3000},
        "speedup_end_to_end": round(ref_total / jax_total, 2),
        "speedup_decode": round((decode_tokens / jax_decode) / (decode_tokens / (ref_total - ref_prefill)), 2),
        "speedup_audio_encoder": round(ref_encode / jax_encode, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, jax {jax.__version__} "
                   f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads)",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
