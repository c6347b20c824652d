"""`convert` (HF -> ours) and `export-hf` (ours -> HF)."""

from __future__ import annotations

import argparse

from qwen_audio_jax.choices import CONVERT_DTYPES, DEFAULT_CONVERT_DTYPE


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="Hugging Face Qwen2-Audio / Qwen-Audio checkpoint -> qwen-audio-jax model dir (Orbax)",
        description="Converts an HF checkpoint directory (config.json + safetensors) into a model dir: "
        "config.json, Orbax params, tokenizer and preprocessor files. Reads one tensor at a time; no torch. "
        "Lossless by default: every tensor keeps its source dtype.",
    )
    p.add_argument("src", help="HF checkpoint directory (e.g. a local copy of Qwen/Qwen2-Audio-7B-Instruct)")
    p.add_argument("dst", help="output model directory (must not exist unless --overwrite)")
    p.add_argument(
        "--dtype",
        default=DEFAULT_CONVERT_DTYPE,
        choices=CONVERT_DTYPES,
        help="stored param dtype (default %(default)s: each tensor's source dtype)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace DST if it is a model dir written by qwen-audio-jax"
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also accept pickled pytorch_model*.bin (loaded with torch, weights_only=True)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "export-hf",
        help="qwen-audio-jax model dir -> Hugging Face directory (sharded safetensors)",
        description="Writes an HF directory in the model's own format: transformers' "
        "Qwen2AudioForConditionalGeneration for Qwen2-Audio, Qwen-Audio's QWenLMHeadModel for v1. A LoRA run's "
        "adapter is exported merged into its base, or with --adapter-only as a PEFT adapter directory.",
    )
    p.add_argument(
        "src",
        help="model directory written by `convert` or by training; a LoRA run's OUTPUT/model (a PEFT adapter dir) "
        "is exported as its base model with the adapter merged",
    )
    p.add_argument("dst", help="output HF directory")
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="SRC is a LoRA adapter dir: write it as a PEFT adapter dir (adapter_config.json, "
        "adapter_model.safetensors) that peft.PeftModel.from_pretrained loads onto the base's transformers model",
    )
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (e.g. 5GB, 500MB)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace DST if it is a directory written by qwen-audio-jax"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_export)


def _convert(args) -> int:
    from qwen_audio_jax.conversion.hf_to_jax import convert

    convert(
        args.src,
        args.dst,
        dtype=args.dtype,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
        progress=not args.no_progress,
    )
    return 0


def _export(args) -> int:
    from qwen_audio_jax.conversion.jax_to_hf import export_adapter, export_hf, parse_size

    if args.adapter_only:
        export_adapter(args.src, args.dst, overwrite=args.overwrite)
        return 0
    parse_size(args.max_shard_size)  # a bad size is refused before anything is read
    export_hf(
        args.src, args.dst, max_shard_size=args.max_shard_size, overwrite=args.overwrite, progress=not args.no_progress
    )
    return 0
