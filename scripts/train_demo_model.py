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

The stages' code is in scripts/demo_training/ (runner.py, model_init.py, evaluation.py, bundle.py, model_card.py);
this file holds the recipe's constants and runs the stages in order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))  # the demo_training package next to this file

# heldout_clips_digest is also what tests/test_demo.py calls on this module (loaded by its file path).
from demo_training.bundle import copy_demo_clips, dir_size, read_metrics, stage_summary, without  # noqa: E402
from demo_training.evaluation import espeak_version, evaluate, headline, heldout_clips_digest  # noqa: E402
from demo_training.model_card import write_model_card  # noqa: E402
from demo_training.model_init import build_initial_model  # noqa: E402
from demo_training.runner import cli, log, run  # noqa: E402

# The demo model's dimensions (see MODEL_CARD.md for the reasoning).
DIMS = dict(
    enc_d_model=192,
    enc_layers=4,
    enc_heads=4,
    enc_ffn=768,
    dec_hidden=192,
    dec_layers=4,
    dec_heads=4,
    dec_kv_heads=2,
    dec_head_dim=48,
    dec_intermediate=512,
)
QUICK = {"scale": 0.02, "sft_steps": 3, "dpo_steps": 2, "batch_size": 4}
POS_SCALE = 0.3  # the encoder's fixed sinusoidal table, scaled (see build_initial_model)


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
        make = [sys.executable, str(REPO / "scripts" / "make_demo_data.py"), str(data)]
        secs = run([*make, "--seed", str(args.seed), "--scale", str(scale)], "corpus", work / "make_demo_data.log")
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
        if not args.quick:
            return []
        batch = [f"train.steps={steps}", f"train.batch_size={QUICK['batch_size']}"]
        return [*batch, "optim.warmup_steps=1", "checkpoint.every=1000"]

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
        paths = [f"model={model_in}", f"data.train={train_file}", f"output_dir={out_dir}"]
        cmd = cli() + [command, "--config", str(REPO / "configs" / config), "--no-progress", *paths, *overrides]
        secs = run(cmd, name.upper(), work / f"{name}.log")
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
        "dims": DIMS,
        "model_config": built["config"],
        "params": built["params"],
        "params_trainable": built["params_trainable"],
        "tokenizer_vocab": load_tokenizer(out).vocab_size,
        "corpus": corpus,
        "stages": stages,
        "run_configs": run_configs,
        "heldout": {**heldout, "headline": headline(heldout["final"])},
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "pos_scale": POS_SCALE,
        "espeak": espeak_version(),
    }
    clips = copy_demo_clips(data, clips_out, work / "eval" / "results.jsonl", quick=args.quick)
    info["total_seconds"] = round(time.time() - t_start + reused_seconds, 1)
    metrics = {
        "stages": stages,
        **{f"{name}_metrics": read_metrics(work / name) for name, *_ in plan},
        "heldout": {k: without(v, "examples") for k, v in heldout.items()},
        "headline": headline(heldout["final"]),
        "total_seconds": info["total_seconds"],
        "quick": args.quick,
    }
    (out / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    # What `qwen-audio-jax demo` prints and tests/test_demo.py checks the bundled model against.
    from qwen_audio_jax.demo.scoring import score_answers

    recorded = {
        "heldout": without(heldout["final"], "examples", "by_prompt"),
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
