"""`dpo`: DPO (or SFT with `--loss sft`) training from a YAML run config with dotted overrides."""

from __future__ import annotations

import argparse
import json
import sys

from qwen_audio_jax.runtime import CACHE_FLAG_HELP


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dpo", help="DPO / SFT training (resumable, sharded)",
        description="Trains from a run config (see configs/). Re-running the same command resumes from the "
        "latest checkpoint in output_dir. Overrides: key.sub=value, e.g. train.steps=200 loss.beta=0.2.",
    )  # fmt: skip
    p.add_argument("--config", default=None, help="run config YAML (configs/dpo_*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.learning_rate=5e-6")
    p.add_argument("--loss", default=None, help="shorthand for loss.types (e.g. sft, sigmoid, ipo, sigmoid+sft)")
    p.add_argument("--mesh", default=None, help="device mesh, e.g. fsdp=8 (overrides mesh:)")
    p.add_argument("--precompute-ref", action="store_true",
                   help="compute the reference log-probs once (reference_logps.json) and exit; then train with "
                   "reference.mode=precomputed")  # fmt: skip
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host; reads the usual env/cluster settings)")
    p.add_argument("--compilation-cache", default=None, metavar="DIR",
                   help=CACHE_FLAG_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_dpo)


def _dpo(args) -> int:
    if args.distributed:
        import jax

        jax.distributed.initialize()
    from qwen_audio_jax.runtime import setup_compilation_cache
    from qwen_audio_jax.training.run_config import load_run_config
    from qwen_audio_jax.training.trainer import Trainer

    setup_compilation_cache(args.compilation_cache)
    overrides = list(args.overrides)
    if args.loss:
        types = args.loss.split("+")
        overrides += [f"loss.types={json.dumps(types)}", f"loss.weights={json.dumps([1.0] * len(types))}"]
    if args.mesh:
        overrides.append(f"mesh={args.mesh}")
    cfg = load_run_config(args.config, overrides)
    trainer = Trainer(cfg, progress=not args.no_progress)
    if args.precompute_ref:
        trainer.precompute_reference()
        return 0
    summary = trainer.run()
    print(json.dumps({"final_model": summary["final_model"], **summary["last_metrics"]}), file=sys.stderr)
    return 0
