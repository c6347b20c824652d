"""MODEL_CARD.md of the demo model: held-out figures, dimensions, data, training runs, how to reproduce."""

from __future__ import annotations

import json
from pathlib import Path


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
        (
            "  by kind: tone / chirp / noise / beeps",
            " / ".join(_pct(f["accuracy"].get(k)) for k in ("tone", "chirp", "noise", "beeps")),
        ),
    ]


def _stage_row(label: str, st: dict, rc: dict) -> str:
    o, t, a = rc["optim"], rc["train"], rc.get("augment", {})
    encoder = (
        "frozen"
        if o["freeze_audio_encoder"]
        else f"trained (lr x {o['encoder_lr_multiplier']}, layer decay {o['encoder_layer_decay']})"
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
    return (
        f"| {label} | {st.get('steps')} | {t['batch_size']} | {o['learning_rate']} -> {o['min_learning_rate']} | "
        f"{encoder} | {aug} | {st['seconds'] / 60:.1f} min | {st.get('first_loss')} -> "
        f"{st.get('final_loss_mean_last_10pct')}{extra} |\n"
    )


def write_model_card(path: Path, info: dict) -> None:
    d, c, f, st, rc = info["dims"], info["corpus"], info["heldout"]["final"], info["stages"], info["run_configs"]
    fs = info["heldout"].get("sft")
    digits, classes = f["wer"].get("digits"), _class_acc(f)
    goal_met = digits is not None and digits < 0.10 and classes is not None and classes > 0.90
    before = ""
    if fs:
        before = (
            f"\nBefore DPO (after the two SFT runs): digit WER {_pct(fs['wer'].get('digits'))}, word WER "
            f"{_pct(fs['wer'].get('words'))}, sound class {_pct(_class_acc(fs))}, exact sound "
            f"answers {_pct(fs['accuracy'].get('sounds'))}.\n"
        )
    labels = {
        "sft1": "SFT 1 (`configs/demo_sft1.yaml`)",
        "sft2": "SFT 2 (`configs/demo_sft2.yaml`)",
        "dpo": "DPO sigmoid, beta 0.1, + 0.5 x SFT (`configs/demo_dpo.yaml`)",
    }
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
