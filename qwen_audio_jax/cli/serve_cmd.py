"""`serve`: an OpenAI-compatible HTTP server on the continuous-batching engine (qwen_audio_jax/serving/)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qwen_audio_jax.choices import (
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_HOST,
    DEFAULT_MAX_AUDIO_CLIPS,
    DEFAULT_MAX_AUDIO_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PORT,
    DEFAULT_URL_FETCH_TIMEOUT,
)
from qwen_audio_jax.cli.args import (
    add_adapter_flag,
    add_batch_size_flag,
    add_engine_flags,
    add_long_audio_flag,
    add_quantize_flag,
    add_runtime_flags,
    add_workers_flag,
    engine_options,
    nonneg_int,
    positive_float,
    positive_int,
)

API_KEY_ENV = "QWEN_AUDIO_JAX_API_KEY"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible server: /v1/chat/completions with audio, /v1/audio/transcriptions",
        description="Serves the model over HTTP with the OpenAI API (chat completions with input_audio and "
        "audio_url parts, plain or streamed; audio transcriptions and translations; /v1/models, /health, /metrics). "
        "Concurrent requests share the engine's decode slots; /health answers 200 once every program is compiled. "
        "SIGTERM drains: requests in flight finish, then the command exits 0.",
    )
    p.add_argument("--model", required=True, help="model dir written by `qwen-audio-jax convert` (or training)")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=nonneg_int, default=DEFAULT_PORT, help="0: any free port (default: %(default)s)")
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require `Authorization: Bearer KEY` on /v1 routes (default: ${API_KEY_ENV}, else none)",
    )
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: the dir's name)")
    add_batch_size_flag(p, "decode slots shared by all clients; rounded up to the mesh's batch axes")
    p.add_argument(
        "--max-audio-seconds",
        type=positive_float,
        default=DEFAULT_MAX_AUDIO_SECONDS,
        help="longer clips are refused with a 400 (default: %(default)s); what is kept follows --long-audio",
    )
    p.add_argument(
        "--max-audio-clips",
        type=positive_int,
        default=DEFAULT_MAX_AUDIO_CLIPS,
        help="per request (default: %(default)s)",
    )
    p.add_argument(
        "--allowed-local-media-path",
        default=None,
        metavar="DIR",
        help="file:// audio URLs are read only under DIR (default: refused)",
    )
    p.add_argument("--allow-url-fetch", action="store_true", help="fetch http(s) audio URLs (default: refused)")
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=DEFAULT_MAX_QUEUE,
        help="requests waiting beyond the decode slots; more are answered 503 (default: %(default)s)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="a larger request body is answered 413 (default: %(default)s)",
    )
    p.add_argument(
        "--drain-seconds",
        type=positive_float,
        default=DEFAULT_DRAIN_SECONDS,
        help="SIGTERM: how long requests in flight may take to finish (default: %(default)s)",
    )
    add_workers_flag(p)
    add_long_audio_flag(p)
    add_runtime_flags(p)
    add_quantize_flag(p)
    add_adapter_flag(p)
    add_engine_flags(p)
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from qwen_audio_jax.cli.infer_cmd import load_model
    from qwen_audio_jax.errors import ConfigError
    from qwen_audio_jax.generation.engine import Engine
    from qwen_audio_jax.serving.media import MediaPolicy
    from qwen_audio_jax.serving.server import ServeOptions, bind, serve

    local = None
    if args.allowed_local_media_path is not None:
        local = Path(args.allowed_local_media_path).absolute()
        if not local.is_dir():
            raise ConfigError(f"--allowed-local-media-path {local}: no such directory.")
    if args.distributed:
        raise ConfigError("serve runs on one host (its devices may form a mesh); drop --distributed.")
    try:
        sock = bind(args.host, args.port)  # before the model loads: a busy port costs nothing
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({e.strerror}).") from None
    model, _ = load_model(args)
    opts = engine_options(args)
    engine = Engine(
        model.config,
        model.params,
        dtype=model.dtype,
        placement=model.placement,
        attention=model.attention,
        return_logprobs=True,
        quantized=model.quantized,
        **opts.engine_kwargs(),
    )
    policy = MediaPolicy(
        max_audio_seconds=args.max_audio_seconds,
        max_clips=args.max_audio_clips,
        allowed_local_media_path=local,
        allow_url_fetch=args.allow_url_fetch,
        fetch_timeout=DEFAULT_URL_FETCH_TIMEOUT,
        max_bytes=args.max_body_bytes,
    )
    options = ServeOptions(
        host=args.host,
        port=args.port,
        served_name=args.served_model_name or Path(args.model).absolute().name,
        policy=policy,
        api_key=args.api_key or None,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        drain_seconds=args.drain_seconds,
        workers=args.workers,
        progress=not args.no_progress,
    )
    return serve(model, engine, options, sock)
