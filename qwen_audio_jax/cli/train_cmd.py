"""`train`, `sft` and `dpo`: training from a YAML run config with dotted overrides (one training command; the
names say which loss: `sft` forces the SFT loss, `dpo` a preference loss, `train` takes the config's)."""

from __future__ import annotations

import argparse
import json
import sys

from qwen_audio_jax.cli.args import add_runtime_flags

_HELP = {
    "train": "training with the run config's loss (SFT or DPO; resumable, sharded)",
    "sft": "supervised fine-tuning (chosen completions only; resumable, sharded)",
    "dpo": "DPO preference training (resumable, sharded; also --precompute-ref)",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for name, help_text in _HELP.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description="Trains from a run config (see configs/). Re-running the same command resumes from the "
            "latest checkpoint in output_dir. Overrides: key.sub=value, e.g. train.steps=200 loss.beta=0.2.",
        )
        p.add_argument("--config", default=None, help="run config YAML (configs/*.yaml)")
        p.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.learning_rate=5e-6"
        )
        if name != "sft":
            p.add_argument("--loss", default=None, help="shorthand for loss.types (e.g. sigmoid, ipo, sigmoid+sft)")
        if name == "dpo":
            p.add_argument(
                "--precompute-ref",
                action="store_true",
                help="compute the reference log-probs once (reference_logps.json) and exit; then train "
                "with reference.mode=precomputed",
            )
        add_runtime_flags(p, mesh_help="device mesh, e.g. fsdp=8 (overrides the config's mesh:)")
        p.set_defaults(func=_train, command_name=name)


def _train(args) -> int:
    from qwen_audio_jax.checkpoint.safe_write import release_work_dir
    from qwen_audio_jax.cli.args import start_runtime
    from qwen_audio_jax.errors import ConfigError
    from qwen_audio_jax.training.loop import precompute_reference, train
    from qwen_audio_jax.training.run import TrainingRun
    from qwen_audio_jax.training.run_config import load_run_config

    overrides = list(args.overrides)
    loss = "sft" if args.command_name == "sft" else getattr(args, "loss", None)
    if loss:
        types = loss.split("+")
        overrides += [f"loss.types={json.dumps(types)}", f"loss.weights={json.dumps([1.0] * len(types))}"]
    if args.mesh:
        overrides.append(f"mesh={args.mesh}")
    if args.dtype:
        overrides.append(f"train.compute_dtype={args.dtype}")
    cfg = load_run_config(args.config, overrides)
    if args.command_name == "dpo" and not cfg.loss.is_preference:
        print("note: this config trains SFT only; `qwen-audio-jax sft` is the command for that.", file=sys.stderr)
    if args.command_name == "sft" and cfg.loss.is_preference:
        raise ConfigError("`sft` trains the SFT loss only; use `qwen-audio-jax dpo` for preference losses.")
    start_runtime(args)
    try:
        run = TrainingRun.build(cfg)  # checks output_dir against the model, reference and data, then locks it
        if getattr(args, "precompute_ref", False):
            precompute_reference(run, progress=not args.no_progress)
            return 0
        summary = train(run, progress=not args.no_progress)
    finally:
        release_work_dir(cfg.output_dir)
    print(json.dumps({"final_model": summary["final_model"], **summary["last_metrics"]}), file=sys.stderr)
    return 0
