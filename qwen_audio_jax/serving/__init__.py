"""`qwen-audio-jax serve`: an OpenAI-compatible HTTP server on the continuous-batching engine
(docs/architecture.md, "Serving"; README "Serving").

One engine loop owns the device, on its own thread, fed by a queue (engine_loop.py); the HTTP side (FastAPI on
uvicorn, its own event loop) parses and validates (protocol.py, media.py), prepares requests on worker threads,
enqueues them and streams the tokens back (chat.py, transcribe.py). One concern per file:

    errors.py        OpenAI's error JSON and statuses
    media.py         audio parts -> files the processor loads as `generate` does (base64, data URLs, file://)
    protocol.py      the chat-completion request: fields, types, ranges -> the engine's request
    text_stream.py   token ids -> text deltas (UTF-8 safe), stop strings, logprobs entries
    engine_loop.py   the engine thread, its queue source, per-request event sinks, cancellation
    metrics.py       Prometheus counters, gauges and histograms
    chat.py          /v1/chat/completions, plain and streamed (Server-Sent Events)
    transcribe.py    /v1/audio/transcriptions and /translations over the task presets
    app.py           the FastAPI app: routes, API key, body size limit, error handlers
    server.py        load, warm up, bind, run; SIGTERM drains
"""
