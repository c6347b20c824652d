#!/usr/bin/env python3
"""Trains the bundled demo model end to end with this project's own commands.

    python scripts/train_demo_model.py            # the full recipe (2-core CPU: well under an hour)
    python scripts/train_demo_model.py --quick    # a few steps of every stage (CI: about 2 minutes)

Stages (each one a subprocess, run as a user would):

  1. corpus + tokenizer:  python scripts/make_demo_data.py WORK/data
  2. a random-weight Qwen2-Audio model dir (small widths, 128 mel bins, max_source_positions 1500, the corpus
     tokenizer's vocab and ids; the encoder's stored positional table filled with Whisper's sinusoids)
  3. SFT:   qwen-audio-jax sft --config configs/demo_sft1.yaml model=WORK/init ..., then demo_sft2.yaml from its model
  4. DPO:   qwen-audio-jax dpo --config configs/demo_dpo.yaml model=WORK/sft2/model data.train=WORK/data/dpo_train.jsonl
  5. held-out evaluation: qwen-audio-jax generate (greedy) over WORK/data/heldout_requests.jsonl; WER on the
     transcription requests (digits and words separately), accuracy on the sound requests
  6. the final model dir -> qwen_audio_jax/assets/demo_model/ (+ training_metrics.json, MODEL_CARD.md), and a few
     held-out clips with demo_requests.jsonl -> qwen_audio_jax/assets/demo_clips/

`--quick` writes its outputs under WORK/quick-assets/ instead of the package, so CI never replaces the shipped model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The demo model's dimensions (see MODEL_CARD.md for the reasoning).
DIMS = dict(
    enc_d_model=192, enc_layers=4, enc_heads=4, enc_ffn=768,
    dec_hidden=192, dec_layers=4, dec_heads=4, dec_kv_heads=2, dec_head_dim=48, dec_intermediate=512,
)  # fmt: skip
QUICK = {"scale": 0.02, "sft_steps": 3, "dpo_steps": 2, "batch_size": 4}
POS_SCALE = 0.3  # the encoder's fixed sinusoidal table, scaled (see build_initial_model)


def log(msg: str) -> None:
    print(f"[train_demo_model {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "qwen-audio-jax"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("qwen-audio-jax")
    if not found:
        raise SystemExit("error: the `qwen-audio-jax` command is not on PATH; pip install -e . first")
    return [found]


def run(cmd: list[str], what: str, log_file: Path | None = None, cwd: Path = REPO) -> float:
    """Runs a stage; its output goes to the console and to log_file; returns the wall time."""
    log(f"{what}: {' '.join(cmd)}")
    t = time.time()
    with open(log_file, "w") if log_file else open(os.devnull, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
        for line in proc.stdout:
            lf.write(line)
            if not line.startswith(("sft:", "dpo:")) or "it/s" not in line and "s/it" not in line:
                sys.stdout.write("    " + line)
        rc = proc.wait()
    if rc:
        raise SystemExit(f"error: {what} failed (exit {rc}); see {log_file}")
    return time.time() - t


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the initial model dir
# ---------------------------------------------------------------------------------------------------------------


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's positional table (what Qwen2-Audio's released encoder stores in embed_positions)."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def model_config(tokenizer_dir: Path, dims: dict):
    from qwen_audio_jax.config import AudioEncoderConfig, DecoderConfig, ModelConfig
    from qwen_audio_jax.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    vocab = int(math.ceil(tok.vocab_size / 64) * 64)  # embedding rows: the tokenizer's ids, padded to 64
    return ModelConfig(
        audio=AudioEncoderConfig(num_mel_bins=128, d_model=dims["enc_d_model"], num_layers=dims["enc_layers"],
                                 num_heads=dims["enc_heads"], ffn_dim=dims["enc_ffn"], max_source_positions=1500),
        decoder=DecoderConfig(vocab_size=vocab, hidden_size=dims["dec_hidden"],
                              intermediate_size=dims["dec_intermediate"], num_layers=dims["dec_layers"],
                              num_heads=dims["dec_heads"], num_kv_heads=dims["dec_kv_heads"],
                              head_dim=dims["dec_head_dim"], rms_norm_eps=1e-6, rope_theta=10000.0,
                              max_position_embeddings=8192),
        audio_token_id=tok.audio_token_id, bos_token_id=tok.endoftext_id, eos_token_id=tok.im_end_id,
        pad_token_id=tok.pad_id,
    )  # fmt: skip


def build_initial_model(tokenizer_dir: Path, dst: Path, dims: dict, seed: int, pos_scale: float = 1.0) -> dict:
    import jax

    from qwen_audio_jax.audio.constants import preprocessor_config
    from qwen_audio_jax.checkpoint.model_dir import save_params, write_config
    from qwen_audio_jax.checkpoint.safe_write import atomic_directory
    from qwen_audio_jax.model.params import count_params, init_params

    dst = Path(dst).resolve()  # Orbax refuses relative checkpoint paths
    config = model_config(tokenizer_dir, dims)
    params = jax.device_get(init_params(config, jax.random.PRNGKey(seed)))
    tower = params["audio_tower"]
    pos = tower["embed_positions"]
    tower["embed_positions"] = pos_scale * sinusoids(*pos.shape)
    # He-scaled conv stem: with the default normal(0.02) the stem's output is ~50x smaller than the positional
    # table at init, so every clip looks the same to the decoder (measured: across-clip / positional variance
    # of the projected features 0.003) and SFT spends hundreds of steps before the audio path carries anything.
    for name in ("conv1", "conv2"):
        k = tower[name]["kernel"]  # [width, in, out]
        tower[name]["kernel"] = (k * (np.sqrt(2.0 / (k.shape[0] * k.shape[1])) / 0.02)).astype(k.dtype)
    with atomic_directory(dst, "model", overwrite=True) as tmp:
        save_params(tmp, params)
        write_config(tmp, config, "float32")
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json"):
            shutil.copy2(tokenizer_dir / name, tmp / name)
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(128), indent=2) + "\n")
        gen = {"bos_token_id": config.bos_token_id, "eos_token_id": [config.eos_token_id, config.bos_token_id],
               "pad_token_id": config.pad_token_id, "do_sample": False}  # fmt: skip
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    trainable = count_params(params) - pos.size
    return {"config": config.to_dict(), "params": count_params(params), "params_trainable": int(trainable)}


# ---------------------------------------------------------------------------------------------------------------
# Stage 5: evaluation
# ---------------------------------------------------------------------------------------------------------------


def score(results_path: Path, refs_path: Path) -> dict:
    """The demo scorer (qwen_audio_jax.demo.scoring) over every held-out request, and per prompt style."""
    from qwen_audio_jax.demo.scoring import score_answers

    refs = [json.loads(line) for line in refs_path.read_text().splitlines()]
    got = {r["id"]: r.get("text") for r in map(json.loads, results_path.read_text().splitlines())}
    figures = score_answers((r["kind"], r["expected"], got.get(r["id"])) for r in refs)
    prompts = sorted({r["prompt"] for r in refs})
    figures["by_prompt"] = {
        p: score_answers((r["kind"], r["expected"], got.get(r["id"])) for r in refs if r["prompt"] == p)
        for p in prompts
    }
    figures["examples"] = [{"id": r["id"], "expected": r["expected"], "got": got.get(r["id"])} for r in refs[:400]]
    return figures


def evaluate(model: Path, data: Path, out: Path, batch_size: int) -> tuple[dict, float]:
    out = out.resolve()  # generate runs in the data dir (relative audio paths)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    secs = run(
        cli()
        + [
            "generate",
            "--model",
            str(model),
            "--input",
            str(data / "heldout_requests.jsonl"),
            "--output",
            str(results),
            "--overwrite",
            "--max-new-tokens",
            "24",
            "--batch-size",
            str(batch_size),
            "--no-progress",
        ],
        f"evaluate {model.parent.name}/{model.name}",
        out / "generate.log",
        cwd=data,
    )  # fmt: skip  (generate resolves relative audio paths from the working directory)
    figures = score(results, data / "heldout_references.jsonl")
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures, secs


def headline(f: dict) -> dict:
    return {
        "wer_digits": f["wer"].get("digits"),
        "wer_words": f["wer"].get("words"),
        "sound_accuracy": f["accuracy"].get("sounds"),
        "sound_class_accuracy": f.get("sound_class", {}).get("accuracy"),
    }


# ---------------------------------------------------------------------------------------------------------------
# Stage 6: bundle
# ---------------------------------------------------------------------------------------------------------------


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys} if isinstance(d, dict) else d


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    return out.split(":")[1].split()[0] if ":" in out else out.strip()


def heldout_clips_digest(data: Path) -> str:
    """sha256 over the held-out clips' decoded samples, in manifest order (the same audio, whatever FLAC did)."""
    import hashlib

    from qwen_audio_jax.audio.load import load_audio

    h = hashlib.sha256()
    for line in (data / "manifest_heldout.jsonl").read_text().splitlines():
        h.update(np.ascontiguousarray(load_audio(data / json.loads(line)["path"]), np.float32).tobytes())
    return h.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stage_summary(run_dir: Path, seconds: float) -> dict:
    rows = read_metrics(run_dir)
    if not rows:
        return {"seconds": round(seconds, 1)}
    last = rows[-1]
    first = rows[0]
    window = rows[-max(1, len(rows) // 10) :]
    mean = lambda k: round(float(np.mean([r[k] for r in window if k in r])), 4) if k in last else None  # noqa: E731
    return {"seconds": round(seconds, 1), "steps": last["step"], "first_loss": round(first["loss"], 4),
            "final_loss": round(last["loss"], 4), "final_loss_mean_last_10pct": mean("loss"),
            "final_reward_accuracy_mean_last_10pct": mean("rewards/accuracies"),
            "final_reward_margin_mean_last_10pct": mean("rewards/margins")}  # fmt: skip


def copy_demo_clips(data: Path, dst: Path, results_path: Path, quick: bool = False) -> list[dict]:
    """A mixed handful of held-out clips (spread over noise types) + demo_requests.jsonl: each line a `generate`
    request with its clip path relative to the file, plus "expected" (the reference answer) and
    "trained_model_output" (what the bundled model answered in the held-out evaluation)."""
    from collections import defaultdict

    refs = [json.loads(line) for line in (data / "heldout_references.jsonl").read_text().splitlines()]
    reqs = {r["id"]: r for r in map(json.loads, (data / "heldout_requests.jsonl").read_text().splitlines())}
    got = {r["id"]: r.get("text") for r in map(json.loads, results_path.read_text().splitlines())} \
        if results_path.is_file() else {}  # fmt: skip
    # kind -> (number of clips, the prompts to cycle through)
    plan = {"digits": (7, ["asr-base", "asr-chat0"]), "words": (3, ["asr-chat0", "asr-base"]),
            "tone": (3, ["what-chat0", "specific-chat"]), "chirp": (2, ["what-chat0", "specific-chat"]),
            "noise": (2, ["what-chat0"]), "beeps": (3, ["what-chat0", "specific-chat"])}  # fmt: skip

    def audio_of(req: dict) -> str:
        return req["audio"][0] if "audio" in req else req["messages"][0]["content"][0]["audio"]

    picked = []
    for kind, (n, prompts) in plan.items():
        n = 1 if quick else n
        by_noise: dict[str, list[dict]] = defaultdict(list)
        for r in refs:
            if r["kind"] == kind:
                by_noise[r["noise"]].append(r)
        used: set[str] = set()
        k = 0
        for rnd in range(max((len(v) for v in by_noise.values()), default=0)):
            for noise in sorted(by_noise):
                if k >= n or rnd >= len(by_noise[noise]):
                    continue
                ref = by_noise[noise][rnd]
                clip = audio_of(reqs[ref["id"]])
                if clip in used or ref["prompt"] != prompts[k % len(prompts)]:
                    continue
                used.add(clip)
                picked.append(ref)
                k += 1
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    lines = []
    for ref in picked:
        req = json.loads(json.dumps(reqs[ref["id"]]))
        src = audio_of(req)
        name = Path(src).name
        shutil.copy2(data / src, dst / name)
        if "audio" in req:
            req["audio"] = [name]
        else:
            req["messages"][0]["content"][0]["audio"] = name
        lines.append(
            {
                **req,
                "expected": ref["expected"],
                "kind": ref["kind"],
                "noise": ref["noise"],
                "trained_model_output": got.get(ref["id"]),
            }
        )
    (dst / "demo_requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return lines


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _class_acc(f: dict):
    return f.get("sound_class", {}).get("accuracy")


def _figure_rows(f: dict) -> list[tuple[str, str]]:
    bp = f["by_prompt"]
    wer = lambda p, k: bp.get(p, {}).get("wer", {}).get(k)  # noqa: E731
    acc = lambda p, k: bp.get(p, {}).get("accuracy", {}).get(k)  # noqa: E731
    return [
        ("**spoken digits (1-5): WER**, both prompts", f"**{_pct(f['wer'].get('digits'))}**"),
        ("  base prompt `...recognize the speech: <\\|en\\|>`", _pct(wer("asr-base", "digits"))),
        ("  chat `Transcribe the speech in this audio...`", _pct(wer("asr-chat0", "digits"))),
        ("spoken word phrases: WER", _pct(f["wer"].get("words"))),
        ("**sounds: class named right** (`What sound is this?`)", f"**{_pct(_class_acc(f))}**"),
        ("sounds: exact answer, every sound question", _pct(f["accuracy"].get("sounds"))),
        ("  `What sound is this?` (class and note / direction / count)", _pct(acc("what-chat0", "sounds"))),
        ("  the specific question (note / direction / count)", _pct(acc("specific-chat", "sounds"))),
        ("  by kind: tone / chirp / noise / beeps", " / ".join(_pct(f["accuracy"].get(k)) for k in
                                                         ("tone", "chirp", "noise", "beeps"))),
    ]  # fmt: skip


def _stage_row(label: str, st: dict, rc: dict) -> str:
    o, t, a = rc["optim"], rc["train"], rc.get("augment", {})
    encoder = (
        "frozen"
        if o["freeze_audio_encoder"]
        else (f"trained (lr x {o['encoder_lr_multiplier']}, layer decay {o['encoder_layer_decay']})")
    )
    aug = (
        f"SpecAugment {a['freq_masks']}x{a['freq_width']} bins, {a['time_masks']}x{a['time_width']} frames"
        if a.get("spec_augment")
        else "none"
    )
    extra = (
        f"; reward accuracy {st.get('final_reward_accuracy_mean_last_10pct')}"
        if "sigmoid" in rc["loss"]["types"]
        else ""
    )
    return (f"| {label} | {st.get('steps')} | {t['batch_size']} | {o['learning_rate']} -> {o['min_learning_rate']} | "
            f"{encoder} | {aug} | {st['seconds'] / 60:.1f} min | {st.get('first_loss')} -> "
            f"{st.get('final_loss_mean_last_10pct')}{extra} |\n")  # fmt: skip


def write_model_card(path: Path, info: dict) -> None:
    d, c, f, st, rc = info["dims"], info["corpus"], info["heldout"]["final"], info["stages"], info["run_configs"]
    fs = info["heldout"].get("sft")
    digits, classes = f["wer"].get("digits"), f.get("sound_class", {}).get("accuracy")
    goal_met = digits is not None and digits < 0.10 and classes is not None and classes > 0.90
    before = "" if not fs else (
        f"\nBefore DPO (after the two SFT runs): digit WER {_pct(fs['wer'].get('digits'))}, word WER "
        f"{_pct(fs['wer'].get('words'))}, sound class {_pct(fs.get('sound_class', {}).get('accuracy'))}, exact sound "
        f"answers {_pct(fs['accuracy'].get('sounds'))}.\n")  # fmt: skip
    labels = {"sft1": "SFT 1 (`configs/demo_sft1.yaml`)", "sft2": "SFT 2 (`configs/demo_sft2.yaml`)",
              "dpo": "DPO sigmoid, beta 0.1, + 0.5 x SFT (`configs/demo_dpo.yaml`)"}  # fmt: skip
    stage_rows = "".join(_stage_row(labels[n], st[n], rc[n]) for n in labels if n in st and n in rc)
    text = (
        f"""# qwen-audio-jax demo model

A small model of the **Qwen2-Audio architecture** (Whisper-style audio encoder -> linear projector -> Qwen2
decoder), trained from random weights by this project's own `qwen-audio-jax sft` and `dpo` commands on a
synthetic corpus, so that `qwen-audio-jax demo` shows audio understanding with nothing to download. It
transcribes short spoken English digit and word sequences and names simple synthetic sounds; it knows nothing else.

## Held-out results

Greedy decoding (`qwen-audio-jax generate`) with the stored weights: {info["heldout"]["requests"]} requests on
held-out clips whose (speaker, noise) or (timbre, noise) combinations never occur in training.

| metric | value |
|---|---|
"""
        + "".join(f"| {a} | {b} |\n" for a, b in _figure_rows(f))
        + f"""{before}
Goals of the demo: WER under 10 % on the spoken digits, sound class named right over 90 %: **{
            "met" if goal_met else "not met"
        }**. The same figures are in `heldout_figures.json` (which `qwen-audio-jax demo` prints) and the
per-step training curves in `training_metrics.json`.

## Model

| | |
|---|---|
| audio encoder | {d["enc_layers"]} layers, d_model {d["enc_d_model"]}, {d["enc_heads"]} heads, ffn {
            d["enc_ffn"]
        }, 128 mel bins, max_source_positions 1500 (fixed sinusoidal table x {info["pos_scale"]}) |
| decoder | {d["dec_layers"]} layers, hidden {d["dec_hidden"]}, {d["dec_heads"]} heads ({
            d["dec_kv_heads"]
        } KV heads, head_dim {d["dec_head_dim"]}), MLP {d["dec_intermediate"]}, RoPE 10000, RMSNorm 1e-6 |
| vocabulary | {
            info["tokenizer_vocab"]
        } tokens (byte-level BPE trained on the corpus text, + 7 special tokens); embedding and lm_head {
            info["model_config"]["decoder"]["vocab_size"]
        } rows |
| parameters | {info["params"]:,} ({info["params_trainable"]:,} trainable; the rest is the fixed positional table) |
| stored | fp32, {info["size_bytes"] / 1e6:.1f} MB on disk (this directory) |

Initialisation: normal(0.02) everywhere (the package's `init_params`), except the conv stem (He-scaled) and the
encoder's fixed positional table (Whisper's sinusoids x {info["pos_scale"]}): with the defaults the stem's output
is ~50x smaller than the positional table, and every clip looks the same to the decoder.

Tokenizer: `tokenizer.json` + `tokenizer_config.json` (the Qwen2 pre-tokenizer regex, NFC, byte level; the
Qwen2-Audio special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|AUDIO|>`, `<|audio_bos|>`,
`<|audio_eos|>` and the `<|en|>` language tag as added special tokens) with the Qwen2-Audio chat template (also
in `chat_template.json`). `transformers.AutoTokenizer` loads it and gives the same ids.

## Data

`scripts/make_demo_data.py` (seed {c["seed"]}, espeak-ng {info["espeak"]}), {c["generation_s"]} s to generate:
{json.dumps(c["clips"])} clips, {c["duration_s"]["mean"]} s long on average (at most {c["duration_s"]["max"]} s).

* Speech by `espeak-ng`, 16 speakers (voice + variant: en-us, en-gb, en-gb-scotland, en-gb-x-rp, en-029,
  en-us-nyc, en-gb-x-gbclan, en-gb-x-gbcwmd; m1-m7, f1-f5, klatt2), 140-200 wpm, random pitch and word gap,
  resampled from 22,050 Hz to 16 kHz: sequences of 1-5 digits, and 2-4 word phrases over 24 words.
* Sounds synthesised with numpy in four timbres (sine, triangle, square, saw): tones at 8 notes (C4 E4 G4 A4 C5
  E5 G5 A5, slightly detuned), chirps sweeping up or down, noise bursts (white, pink, brown, band-passed), 1-5
  beeps.
* Augmentation: background noise (clean, white, pink, mains hum) at 10-30 dB SNR, random gain, synthetic room
  reverberation (RT60 0.15-0.6 s) on half the clips.
* Held-out split: a quarter of the (speaker or timbre) x noise-type cells, never used in training.
* Prompts in the reference styles: the base ASR prompt `<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language
  and recognize the speech: <|en|>`, the base caption prompt `...Generate the caption in English:`, and chat
  turns ("What sound is this?", "Transcribe the speech in this audio. Output only the transcript.", "Which musical
  note is this tone?", "Is the chirp going up or down?", "How many beeps are there?", ...): one per clip,
  {c["sft_examples"]["train"]} SFT examples; {c["dpo_pairs"]} DPO pairs whose rejected answer is a plausible mistake (a
  wrong, dropped or inserted digit, a wrong word, a neighbouring note, a count off by one, the wrong direction).

## Training

| run | steps | batch | learning rate | audio encoder | augmentation | time | loss (first -> last 10 %) |
|---|---|---|---|---|---|---|---|
"""
        + stage_rows
        + f"""
Total wall time of `scripts/train_demo_model.py` (corpus, three runs, two evaluations, bundling):
{info["total_seconds"] / 60:.1f} min on {info["machine"]}.

## Reproduce

```bash
. .venv/bin/activate
python scripts/train_demo_model.py            # writes qwen_audio_jax/assets/demo_model and demo_clips
python scripts/train_demo_model.py --quick    # a few steps of every stage (smoke test; writes under runs/demo/quick)
```

Everything is seeded; the figures can move a little between machines (XLA CPU reductions) and espeak-ng versions.
"""
    )
    path.write_text(text)


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few steps of every stage (CI smoke test)")
    ap.add_argument("--workdir", type=Path, default=REPO / "runs" / "demo")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the model dir goes (default qwen_audio_jax/assets/demo_model; --quick: WORK/quick-assets)",
    )
    ap.add_argument("--clips-out", type=Path, default=None, help="default: next to --out, demo_clips/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse-data", action="store_true", help="keep WORK/data if it is complete")
    ap.add_argument(
        "--no-eval-sft",
        dest="eval_sft",
        action="store_false",
        help="skip the held-out evaluation of the SFT model (before DPO); about a minute",
    )
    ap.add_argument("--scale", type=float, default=None, help="corpus scale (make_demo_data.py --scale)")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument(
        "--sft-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides for the first SFT run (e.g. train.steps=100)",
    )
    ap.add_argument("--sft2-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--dpo-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--skip-dpo", action="store_true")
    ap.add_argument(
        "--reuse-runs",
        action="store_true",
        help="keep every training run whose model dir is complete (re-evaluate and re-bundle only)",
    )
    args = ap.parse_args(argv)
    t_start = time.time()
    reused_seconds = 0.0  # stages taken from an earlier run count with their recorded times
    work = args.workdir.resolve()
    if args.quick:
        work = work / "quick"
    work.mkdir(parents=True, exist_ok=True)
    assets = REPO / "qwen_audio_jax" / "assets"
    out = (args.out or (work / "quick-assets" / "demo_model" if args.quick else assets / "demo_model")).resolve()
    clips_out = (args.clips_out or out.parent / "demo_clips").resolve()
    data = work / "data"
    stages: dict[str, dict] = {}

    # 1. corpus + tokenizer
    scale = args.scale if args.scale is not None else (QUICK["scale"] if args.quick else 1.0)
    if not (args.reuse_data and (data / "corpus_info.json").is_file()):
        secs = run([sys.executable, str(REPO / "scripts" / "make_demo_data.py"), str(data), "--seed",
                    str(args.seed), "--scale", str(scale)], "corpus", work / "make_demo_data.log")  # fmt: skip
    else:
        log(f"reusing {data}")
    corpus = json.loads((data / "corpus_info.json").read_text())
    if args.reuse_data and (data / "corpus_info.json").is_file():
        secs = reused_seconds = corpus["generation_s"]
    stages["corpus"] = {"seconds": round(secs, 1)}

    # 2. initial model
    t = time.time()
    init = work / "init"
    built = build_initial_model(data / "tokenizer", init, DIMS, args.seed, pos_scale=POS_SCALE)
    stages["init"] = {"seconds": round(time.time() - t, 1)}
    log(f"initial model: {built['params']:,} params ({built['params_trainable']:,} trained) -> {init}")

    # 3. SFT (two runs of the same config), 4. DPO
    def quick(steps: int) -> list[str]:
        return [f"train.steps={steps}", f"train.batch_size={QUICK['batch_size']}", "optim.warmup_steps=1",
                "checkpoint.every=1000"] if args.quick else []  # fmt: skip

    plan = [
        ("sft1", "sft", "demo_sft1.yaml", data / "sft_train.jsonl", [*quick(QUICK["sft_steps"]), *args.sft_override]),
        ("sft2", "sft", "demo_sft2.yaml", data / "sft_train.jsonl", [*quick(QUICK["sft_steps"]), *args.sft2_override]),
        ("dpo", "dpo", "demo_dpo.yaml", data / "dpo_train.jsonl", [*quick(QUICK["dpo_steps"]), *args.dpo_override]),
    ]
    if args.skip_dpo:
        plan = plan[:2]
    model_in = init
    run_configs = {}
    from qwen_audio_jax.training.run_config import load_run_config

    for name, command, config, train_file, overrides in plan:
        out_dir = work / name
        run_configs[name] = load_run_config(REPO / "configs" / config, overrides).to_dict()
        if args.reuse_runs and (out_dir / "model" / "config.json").is_file():
            stages[name] = json.loads((out_dir / "stage.json").read_text())
            reused_seconds += stages[name]["seconds"]
            log(f"reusing {out_dir}")
            model_in = out_dir / "model"
            continue
        shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run (a leftover checkpoint would be resumed)
        secs = run(cli() + [command, "--config", str(REPO / "configs" / config), "--no-progress", f"model={model_in}",
                            f"data.train={train_file}", f"output_dir={out_dir}", *overrides],
                   name.upper(), work / f"{name}.log")  # fmt: skip
        stages[name] = stage_summary(out_dir, secs)
        (out_dir / "stage.json").write_text(json.dumps(stages[name]) + "\n")
        log(f"{name}: {json.dumps(stages[name])}")
        model_in = out_dir / "model"
    final = model_in
    sft_dir = work / "sft2"

    # 5. held-out evaluation (on the stored weights of the final model dir)
    heldout = {"requests": len((data / "heldout_requests.jsonl").read_text().splitlines())}
    if args.eval_sft and not args.quick and final != sft_dir / "model":
        heldout["sft"], secs = evaluate(sft_dir / "model", data, work / "eval-sft", args.eval_batch_size)
        stages["eval_sft"] = {"seconds": round(secs, 1)}
        log(f"held-out (SFT): {headline(heldout['sft'])}")
    heldout["final"], secs = evaluate(final, data, work / "eval", args.eval_batch_size)
    stages["eval"] = {"seconds": round(secs, 1)}
    log(f"held-out (final): {headline(heldout['final'])}")

    # 6. bundle
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(final, out)
    from qwen_audio_jax.text.tokenizer import load_tokenizer

    info = {
        "dims": DIMS, "model_config": built["config"], "params": built["params"],
        "params_trainable": built["params_trainable"],
        "tokenizer_vocab": load_tokenizer(out).vocab_size, "corpus": corpus, "stages": stages,
        "run_configs": run_configs, "heldout": {**heldout, "headline": headline(heldout["final"])},
        "quick": args.quick, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "pos_scale": POS_SCALE, "espeak": espeak_version(),
    }  # fmt: skip
    clips = copy_demo_clips(data, clips_out, work / "eval" / "results.jsonl", quick=args.quick)
    info["total_seconds"] = round(time.time() - t_start + reused_seconds, 1)
    metrics = {
        "stages": stages,
        **{f"{name}_metrics": read_metrics(work / name) for name, *_ in plan},
        "heldout": {k: _without(v, "examples") for k, v in heldout.items()},
        "headline": headline(heldout["final"]),
        "total_seconds": info["total_seconds"],
        "quick": args.quick,
    }
    (out / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    # What `qwen-audio-jax demo` prints and tests/test_demo.py checks the bundled model against.
    from qwen_audio_jax.demo.scoring import score_answers

    recorded = {
        "heldout": _without(heldout["final"], "examples", "by_prompt"),
        "heldout_requests": heldout["requests"],
        "heldout_clips_sha256": heldout_clips_digest(data),
        "espeak_ng": info["espeak"],
        "seed": args.seed,
        "demo_clips": score_answers((c["kind"], c["expected"], c["trained_model_output"]) for c in clips),
    }
    (out / "heldout_figures.json").write_text(json.dumps(recorded, indent=1) + "\n")
    info["size_bytes"] = dir_size(out)
    write_model_card(out / "MODEL_CARD.md", info)
    info["size_bytes"] = dir_size(out)
    log(
        f"final model -> {out} ({info['size_bytes'] / 1e6:.1f} MB); {len(clips)} demo clips -> {clips_out} "
        f"({dir_size(clips_out) / 1e3:.0f} KB)"
    )
    log(f"done in {info['total_seconds'] / 60:.1f} min: {json.dumps(headline(heldout['final']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
