"""`generate` and `score`: batch inference over request JSONL files."""

from __future__ import annotations

import argparse
import json
import sys

from qwen_audio_jax.runtime import CACHE_FLAG_HELP


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model dir written by `qwen-audio-jax convert` (or training)")
    p.add_argument("--input", required=True, help="request JSONL (one JSON object per line, each with an \"id\")")
    p.add_argument("--output", required=True, help="result JSONL (one line per request)")
    p.add_argument("--batch-size", type=int, default=8, help="rounded up to a multiple of the mesh's batch axes")
    p.add_argument("--mesh", default=None, metavar="SPEC",
                   help="device mesh, e.g. data=8 or data=2,fsdp=2,tensor=2 (-1 = the remaining devices); "
                   "default: one device")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run: keep finished lines, skip their ids")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--long-audio", choices=["truncate", "chunk"], default="truncate",
                   help="clips over 30 s: keep the first 30 s (reference) or split into 30 s clips")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="compute dtype (default: bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--compilation-cache", default=None, metavar="DIR",
                   help=CACHE_FLAG_HELP)
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host: run the same command on every host)")
    p.add_argument("--no-progress", action="store_true")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="batch inference: request JSONL -> result JSONL",
                       description="Generates a reply for every request line; a bad request gets an error line "
                       "and the rest of the batch completes.")  # fmt: skip
    _common(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-id", type=int, action="append", default=None,
                   help="extra stop token id (repeatable); the model's eos and <|endoftext|> always stop")
    p.add_argument("--logprobs", action="store_true", help="add per-token log-probs to each result")
    p.add_argument("--chat", dest="chat", action="store_true", default=None,
                   help="task presets use chat turns (default: when the checkpoint has a chat template)")
    p.add_argument("--no-chat", dest="chat", action="store_false")
    p.set_defaults(func=_generate)

    p = sub.add_parser("score", help="summed log-prob of given completions (DPO reference, multiple choice)")
    _common(p)
    p.set_defaults(func=_score)


def _load(args):
    import jax
    import jax.numpy as jnp

    if args.distributed:
        jax.distributed.initialize()
    from qwen_audio_jax import api
    from qwen_audio_jax.runtime import setup_compilation_cache

    setup_compilation_cache(args.compilation_cache)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, None: None}[args.dtype]
    mesh = None
    if args.mesh:
        from qwen_audio_jax.sharding.mesh import make_mesh

        mesh = make_mesh(args.mesh)
    return api.load(args.model, dtype=dtype, mesh=mesh, long_audio=args.long_audio)


def _generate(args) -> int:
    from qwen_audio_jax.generation.engine import GenerationOptions
    from qwen_audio_jax.jobs.generate import GenerateJob

    model = _load(args)
    stop = None
    if args.stop_id:
        stop = tuple(dict.fromkeys([model.config.eos_token_id, model.config.pad_token_id, *args.stop_id]))
    options = GenerationOptions(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop_ids=stop,
        seed=args.seed, return_logprobs=args.logprobs,
    )  # fmt: skip
    job = GenerateJob(model, options, batch_size=args.batch_size, chat=args.chat)
    summary = job.run_file(args.input, args.output, resume=args.resume, overwrite=args.overwrite,
                           progress=not args.no_progress)  # fmt: skip
    print(json.dumps({"output": args.output, **summary}), file=sys.stderr)
    return 0


def _score(args) -> int:
    from qwen_audio_jax.jobs.score import ScoreJob

    model = _load(args)
    summary = ScoreJob(model, batch_size=args.batch_size).run_file(
        args.input, args.output, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(json.dumps({"output": args.output, **summary}), file=sys.stderr)
    return 0
