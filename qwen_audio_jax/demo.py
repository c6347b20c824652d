"""`qwen-audio-jax demo`: the whole path on a bundled tiny model and generated audio, with no download.

1. build a tiny random-weight Qwen2-Audio (the real tokenizer and 152k vocab, 2+2 small layers);
2. write it as a Hugging Face checkpoint (`export-hf`) and convert it back (`convert`), as a user would;
3. synthesise clips (a tone, a chirp, noise bursts; spoken English too when espeak-ng is installed);
4. run `generate` over a request file (chat, raw prompt, task preset, text only, and a broken request);
5. run `score` over completions.
The weights are random, so the generated text is noise: the demo shows the machinery, not the model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PREPROCESSOR = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "Qwen2AudioProcessor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
}


def build_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """A random-weight tiny() model dir with the bundled tokenizer (our format)."""
    import jax

    from qwen_audio_jax.bundled import write_tokenizer_dir
    from qwen_audio_jax.checkpoint.model_dir import save_params, write_config
    from qwen_audio_jax.checkpoint.safe_write import atomic_directory
    from qwen_audio_jax.config import tiny
    from qwen_audio_jax.model.params import init_params

    config = tiny()
    with atomic_directory(path, "model", overwrite=True) as tmp:
        save_params(tmp, jax.device_get(init_params(config, jax.random.PRNGKey(seed))))
        write_config(tmp, config, "float32")
        write_tokenizer_dir(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return path


def synthesize_clips(directory: Path) -> dict[str, Path]:
    import soundfile as sf

    sr = 16000
    t = np.arange(int(2.0 * sr)) / sr
    clips = {
        "tone": 0.3 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.3 * np.sin(2 * np.pi * (200 + 900 * np.arange(3 * sr) / (3 * sr)) * np.arange(3 * sr) / sr),
        "bursts": np.random.default_rng(0).standard_normal(int(1.5 * sr))
        * (np.arange(int(1.5 * sr)) % 4000 < 800)
        * 0.2,
    }
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, x in clips.items():
        out[name] = directory / f"{name}.wav"
        sf.write(out[name], x.astype(np.float32), sr)
    if shutil.which("espeak-ng"):
        speech = directory / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-w", str(speech), "Mister Quilter is the apostle of the middle classes."],
            check=False,
            capture_output=True,
        )
        if speech.exists() and speech.stat().st_size > 1000:
            out["speech"] = speech
    return out


def _requests(clips: dict[str, Path], missing: Path) -> list[dict]:
    audio = clips.get("speech", clips["tone"])
    return [
        {
            "id": "chat",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", "audio": str(audio)},
                        {"type": "text", "text": "What does the speaker say?"},
                    ],
                }
            ],
        },
        {
            "id": "two-clips",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", "audio": str(clips["chirp"])},
                        {"type": "audio", "audio": str(clips["bursts"])},
                        {"type": "text", "text": "Which clip is louder?"},
                    ],
                }
            ],
        },
        {
            "id": "base-caption",
            "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:",
            "audio": [str(clips["tone"])],
        },
        {"id": "task-asr", "task": "asr", "audio": str(audio), "lang": "en"},
        {"id": "text-only", "messages": [{"role": "user", "content": "Name three musical instruments."}]},
        {"id": "broken", "messages": [{"role": "user", "content": [{"type": "audio", "audio": str(missing)}]}]},
    ]


def run_demo(
    workdir: str | Path | None = None, keep: bool = False, max_new_tokens: int = 16, log: Callable[[str], None] = print
) -> dict:
    from qwen_audio_jax import api
    from qwen_audio_jax.conversion.hf_to_jax import convert
    from qwen_audio_jax.conversion.jax_to_hf import export_hf
    from qwen_audio_jax.generation.options import GenerationOptions
    from qwen_audio_jax.jobs.driver import run_file, run_list
    from qwen_audio_jax.jobs.generate import GenerateJob
    from qwen_audio_jax.jobs.score import ScoreJob

    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="qwen-audio-jax-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    try:
        t = time.perf_counter()
        build_tiny_model_dir(work / "random-init")
        export_hf(work / "random-init", work / "hf-checkpoint", overwrite=True, progress=False, log=lambda m: None)
        timings["build_model_s"] = time.perf_counter() - t
        log(f"[1/5] built a tiny random-weight Qwen2-Audio and wrote it as an HF checkpoint: {work / 'hf-checkpoint'}")

        t = time.perf_counter()
        convert(
            work / "hf-checkpoint", work / "model", dtype="float32", overwrite=True, progress=False, log=lambda m: None
        )
        timings["convert_s"] = time.perf_counter() - t
        log(f"[2/5] qwen-audio-jax convert -> {work / 'model'} ({timings['convert_s']:.1f} s)")

        clips = synthesize_clips(work / "audio")
        log(f"[3/5] synthesised {len(clips)} clips in {work / 'audio'}: {', '.join(sorted(clips))}")

        model = api.load(work / "model")
        requests = _requests(clips, work / "audio" / "missing.wav")
        (work / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
        t = time.perf_counter()
        job = GenerateJob(model, GenerationOptions(max_new_tokens=max_new_tokens), batch_size=4)
        summary = run_file(job, work / "requests.jsonl", work / "results.jsonl", overwrite=True, progress=False)
        timings["generate_s"] = time.perf_counter() - t
        log(
            f"[4/5] qwen-audio-jax generate: {summary['requests']} requests, {summary['errors']} error(s), "
            f"{summary['tokens']} tokens in {timings['generate_s']:.1f} s (incl. compilation) -> results.jsonl"
        )
        for line in (work / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            shown = f"error: {r['error']}" if r["error"] else f"{r['finish_reason']:6s} {r['text'][:50]!r}"
            log(f"      {r['id']:13s} {shown}")

        scores = run_list(
            ScoreJob(model, batch_size=4),
            [{"id": "mc", "messages": requests[0]["messages"], "completions": ["A speech.", "A dog barking."]}],
        )
        log(f"[5/5] qwen-audio-jax score: log p(completion) = {[round(x, 2) for x in scores[0]['logprob']]}")
        log(
            "The weights are random, so the text above is noise; point --model at a converted checkpoint for "
            "real output."
        )
        return {"workdir": str(work), "generate": summary, "timings": timings}
    finally:
        if not keep and workdir is None:
            shutil.rmtree(work, ignore_errors=True)
