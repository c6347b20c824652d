#!/usr/bin/env python3
"""Synthetic, seeded audio corpus (and its tokenizer) for the bundled demo model.

    python scripts/make_demo_data.py OUT_DIR [--seed 0] [--scale 1.0] [--workers 2]

Clips (16 kHz mono FLAC, all under 2.5 s so they encode in the smallest 256-frame bucket):

  * speech, spoken by `espeak-ng` (several voices x variants, random speed / pitch / word gap), resampled from
    espeak's 22,050 Hz to 16 kHz: digit sequences ("three one four") and short word sequences ("open the red box");
  * sounds synthesised with numpy: tones at named notes ("A4"), chirps sweeping up or down, noise bursts, and
    1-5 beeps;
  * augmentation: a background noise type (clean / white / pink / hum) at a random SNR, random gain, and a
    synthetic room reverberation (exponentially decaying noise impulse response) on about half of the clips.

Splits. Every clip has a "source" (a speaker: voice + variant; for sounds: a timbre, i.e. the waveform or the
noise colour of a burst) and a background noise type. The (source, noise) grid is cut into cells; a quarter of
the cells (one noise type per source, one source in four per noise type) belong to the held-out split only, so
no held-out clip's voice/noise combination ever occurs in training, while every voice and every noise type does.

Files written to OUT_DIR (audio paths in the JSONL files are relative to OUT_DIR):

  clips/{train,heldout}/*.flac
  manifest_{train,heldout}.jsonl   one line per clip: id, path, kind, label fields, source, noise, duration
  sft_train.jsonl                  SFT examples: chat {"messages": [user, assistant]} and base-model
                                   {"prompt", "audio", "completion"} records (2 prompts per clip)
  sft_heldout.jsonl                the same for the held-out clips
  dpo_train.jsonl                  preference pairs {"id", "messages" | "prompt"+"audio", "chosen", "rejected"}
                                   whose rejected answer is a plausible mistake (a wrong digit, count, note,
                                   chirp direction...)
  heldout_requests.jsonl           `qwen-audio-jax generate` requests over the held-out clips
  heldout_references.jsonl         {"id", "expected", "kind", "metric"} for each request (metric: wer | accuracy)
  tokenizer/                       the model's byte-level BPE (tokenizer.json, tokenizer_config.json,
                                   chat_template.json), trained on the corpus text
  corpus_info.json                 counts, durations, the split cells, the generation time

The work is done by the modules of scripts/demo_data/ (corpus.py: vocabulary, sources and split cells;
synthesis.py: the clips; prompts.py: prompts, answers, mistakes, held-out requests; tokenizer.py: the BPE);
this file plans the clips and writes the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the demo_data package next to this file

from demo_data.corpus import NOISES, SPEAKERS, TIMBRES, cells, seeded_rng  # noqa: E402
from demo_data.prompts import mistake, pick_prompts, sft_record, write_heldout_requests  # noqa: E402
from demo_data.synthesis import render  # noqa: E402
from demo_data.tokenizer import build_tokenizer, tokenizer_texts  # noqa: E402

# Clips per split and kind at --scale 1.
COUNTS = {
    "train": {"digits": 4500, "words": 700, "tone": 800, "chirp": 500, "noise": 250, "beeps": 850},
    "heldout": {"digits": 200, "words": 80, "tone": 64, "chirp": 48, "noise": 32, "beeps": 64},
}


def plan(seed: int, scale: float, out: Path, splits=tuple(COUNTS)) -> list[dict]:
    """Every clip to make; each (split, kind) has its own random stream, so one split alone is the same clips."""
    specs = []
    for split, counts in ((s, COUNTS[s]) for s in splits):
        for kind, n in counts.items():
            n = max(4, int(round(n * scale)))
            n_sources = len(SPEAKERS) if kind in ("digits", "words") else len(TIMBRES)
            grid = cells(n_sources, heldout=split == "heldout")
            rng = seeded_rng(seed, "plan", split, kind)
            for i in range(n):
                s, z = grid[int(rng.integers(len(grid)))] if split == "train" else grid[i % len(grid)]
                cid = f"{split[0]}-{kind}-{i:05d}"
                specs.append(
                    {
                        "id": cid,
                        "kind": kind,
                        "split": split,
                        "source": s,
                        "noise": z,
                        "seed": seed,
                        "path": f"clips/{split}/{cid}.flac",
                        "out": str(out),
                    }
                )
    return specs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output directory (replaced if it exists)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every clip count (e.g. 0.05 for a smoke test)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--prompts-per-clip", type=int, default=1)
    ap.add_argument("--dpo-fraction", type=float, default=0.065, help="train clips that also give a DPO pair")
    ap.add_argument("--vocab-size", type=int, default=640)
    ap.add_argument(
        "--only-heldout",
        action="store_true",
        help="only the held-out clips, requests and references (what tests/test_demo.py re-scores)",
    )
    args = ap.parse_args(argv)
    if not shutil.which("espeak-ng"):
        print("error: espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    t0 = time.time()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    splits = ("heldout",) if args.only_heldout else tuple(COUNTS)
    for split in splits:
        (out / "clips" / split).mkdir(parents=True)
    specs = plan(args.seed, args.scale, out, splits)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        clips = list(pool.map(render, specs, chunksize=32))
    by_split = {s: [c for c in clips if c["split"] == s] for s in splits}
    for split, rows in by_split.items():
        with open(out / f"manifest_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if args.only_heldout:
        write_heldout_requests(by_split["heldout"], out)
        print(json.dumps({"heldout_clips": len(clips), "generation_s": round(time.time() - t0, 1)}))
        return 0

    # SFT (train and held-out), DPO pairs (train), generate requests + references (held-out).
    rng = seeded_rng(args.seed, "prompts")
    sft = {s: [] for s in COUNTS}
    for split, rows in by_split.items():
        for clip in rows:
            for name, request, answer in pick_prompts(clip, rng, args.prompts_per_clip):
                sft[split].append(sft_record(f"{clip['id']}-{name}", request, answer))
        order = rng.permutation(len(sft[split]))
        with open(out / f"sft_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(sft[split][i]) + "\n" for i in order)
    dpo = []
    for clip in by_split["train"]:
        if rng.random() >= args.dpo_fraction:
            continue
        name, request, answer = pick_prompts(clip, rng, 1)[0]
        dpo.append(
            {"id": f"{clip['id']}-{name}-dpo", **request, "chosen": answer, "rejected": mistake(clip, answer, rng)}
        )
    with open(out / "dpo_train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in dpo)
    requests = write_heldout_requests(by_split["heldout"], out)

    build_tokenizer(tokenizer_texts(sft["train"] + sft["heldout"] + dpo), out / "tokenizer", args.vocab_size)
    durations = np.array([c["duration"] for c in clips])
    info = {
        "seed": args.seed,
        "scale": args.scale,
        "clips": {s: {k: sum(c["kind"] == k for c in rows) for k in COUNTS[s]} for s, rows in by_split.items()},
        "sft_examples": {s: len(v) for s, v in sft.items()},
        "dpo_pairs": len(dpo),
        "heldout_requests": len(requests),
        "duration_s": {
            "mean": round(float(durations.mean()), 3),
            "min": float(durations.min()),
            "max": float(durations.max()),
            "total": round(float(durations.sum()), 1),
        },
        "heldout_cells": {
            "speech": [[f"{v}+{var}", NOISES[z]] for s, z in cells(len(SPEAKERS), True) for v, var in [SPEAKERS[s]]],
            "sounds": [[TIMBRES[s], NOISES[z]] for s, z in cells(len(TIMBRES), True)],
        },
        "generation_s": round(time.time() - t0, 1),
    }
    (out / "corpus_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: info[k] for k in ("clips", "sft_examples", "dpo_pairs", "duration_s", "generation_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
