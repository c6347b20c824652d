"""`POST /v1/chat/completions`: OpenAI's chat completion, plain or streamed as Server-Sent Events.

A request is parsed (protocol.py), prepared on a worker thread exactly as a `generate` request line with the same
messages (audio decoded from its file, the model's own chat template, tokens), then run by the shared engine; its
greedy text equals `generate`'s for the same messages, alone or among other clients.

Streaming follows the OpenAI client's expectations: a first chunk with the assistant role, content deltas, a chunk
with the finish reason, with `stream_options.include_usage` a last chunk of `usage` (no choices), then
`data: [DONE]`. A client that goes away mid-request (streamed or not) cancels its engine request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from qwen_audio_jax.generation.engine import EngineRequest
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.serving.errors import APIError, invalid
from qwen_audio_jax.serving.media import RequestFiles
from qwen_audio_jax.serving.protocol import ChatRequest, default_budget, engine_messages, parse_chat
from qwen_audio_jax.serving.state import Generation, ServerState, new_id
from qwen_audio_jax.serving.text_stream import TextStream


def context_error(prompt_tokens: int, max_new: int | None, max_len: int) -> APIError:
    asked = f" and max_tokens={max_new}" if max_new else ""
    return invalid(
        f"the prompt has {prompt_tokens} tokens{asked}: more than this server's {max_len}-token context "
        "(shorten the messages or the audio, or lower max_tokens).",
        "messages",
        code="context_length_exceeded",
    )


def prepare_chat(state: ServerState, chat: ChatRequest, tag: str) -> EngineRequest:
    """Runs on a worker thread: audio parts to files, the processor, the budget (raises APIError / user errors)."""
    model, engine = state.model, state.engine
    given = chat.sampling.get("max_new_tokens")
    if given is not None and given >= engine.max_len:
        raise context_error(0, given, engine.max_len)
    with RequestFiles(state.policy, model.config.is_v1) as files:
        messages = engine_messages(chat.messages, files)
        prepared = model.processor.prepare({"messages": messages}, max_tokens=engine.max_len - (given or 1))
    sampling = dict(chat.sampling)
    if given is None:
        sampling["max_new_tokens"] = default_budget(prepared.num_tokens, engine.max_len)
        if sampling["max_new_tokens"] <= 0:
            raise context_error(prepared.num_tokens, None, engine.max_len)
    options = GenerationOptions().for_request(sampling, "")  # the stream of a sampled request: its seed alone
    options = dataclasses.replace(options, top_logprobs=chat.top_logprobs)
    if engine.check_request(prepared, options) is not None:
        raise context_error(prepared.num_tokens, given, engine.max_len)
    return EngineRequest(tag, prepared, options)


async def read_json(request: Request):
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"the request body is not valid JSON ({e}).", code="invalid_json") from None


async def chat_completions(state: ServerState, request: Request) -> Response:
    arrived = time.perf_counter()
    chat = parse_chat(await read_json(request))
    state.check_model(chat.model)
    state.check_open()
    rid, created = new_id("chatcmpl"), int(time.time())
    state.admitted += 1
    try:
        engine_request = await state.prepare(lambda: prepare_chat(state, chat, rid))
    except BaseException:
        state.admitted -= 1
        raise
    tokenizer = state.model.tokenizer
    gen = Generation(
        state, engine_request, TextStream(tokenizer, chat.stop, state.engine.stop_ids, chat.logprobs), arrived
    )
    if chat.stream:
        return StreamingResponse(_sse(state, chat, gen, rid, created), media_type="text/event-stream")
    try:
        text, entries = await _collect_unless_gone(request, gen)
    finally:
        state.admitted -= 1
    if text is None:  # the client went away: nobody to answer
        return Response(status_code=499)
    f = gen.finish
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": {"content": entries} if chat.logprobs else None,
        "finish_reason": f.reason,
    }
    return JSONResponse(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": state.served_name,
            "choices": [choice],
            "usage": _usage(f),
        }
    )


def _usage(f) -> dict:
    return {
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    }


async def collect(gen: Generation) -> tuple[str, list]:
    texts, entries = [], []
    async for delta, logprobs in gen.events():
        texts.append(delta)
        entries += logprobs
    return "".join(texts), entries


async def _collect_unless_gone(request: Request, gen: Generation, poll: float = 0.5):
    """The whole text, or (None, []) if the client disconnected first (its engine request is then cancelled)."""
    task = asyncio.ensure_future(collect(gen))
    while True:
        done, _ = await asyncio.wait({task}, timeout=poll)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None, []


def _data(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(state: ServerState, chat: ChatRequest, gen: Generation, rid: str, created: int):
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.served_name}
    usage = {"usage": None} if chat.include_usage else {}

    def chunk(delta: dict, finish=None, logprobs=None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _data({**base, "choices": [choice], **usage})

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for delta, entries in gen.events():
            yield chunk({"content": delta}, logprobs={"content": entries} if chat.logprobs else None)
        yield chunk({}, finish=gen.finish.reason)
        if chat.include_usage:
            yield _data({**base, "choices": [], "usage": _usage(gen.finish)})
    except APIError as e:  # after the 200 and the first chunk: the error goes in the stream
        yield _data(e.body())
    finally:  # also when the client went away (the generator is closed mid-stream)
        state.admitted -= 1
        if gen.finish is None:
            state.loop.cancel(gen.tag)
    yield "data: [DONE]\n\n"
