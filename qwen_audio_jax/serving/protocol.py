"""The chat-completion request as OpenAI (and vLLM's extra parameters) define it, checked field by field on the
event loop before anything costly: a malformed request is a 400 naming its `param`, never an engine error.

Sampling maps onto the engine's per-request settings (choices.SAMPLING_RANGES): `max_tokens` (or
`max_completion_tokens`) -> max_new_tokens, `min_tokens` -> min_new_tokens, `temperature`, `top_p`, `top_k` (vLLM's
-1 = off is 0 here), `repetition_penalty`, `seed`. An omitted value takes the engine's default, as `generate` does:
greedy (temperature 0), and at most choices.DEFAULT_MAX_NEW_TOKENS new tokens (fewer where the context ends).
The random stream of a sampled request depends on its seed alone, so the same request with the same seed gives the
same text again, whatever else the server is doing.
"""

from __future__ import annotations

import dataclasses

from qwen_audio_jax.choices import SAMPLING_DEFAULTS
from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.generation.options import validate_sampling
from qwen_audio_jax.generation.steps import TOP_LOGPROBS
from qwen_audio_jax.serving.errors import APIError, invalid
from qwen_audio_jax.serving.media import RequestFiles

# OpenAI parameter -> engine setting (generation/options.py PER_REQUEST_KEYS)
SAMPLING_PARAMS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "min_tokens": "min_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
}
CHAT_FIELDS = frozenset(
    {"model", "messages", "stream", "stream_options", "stop", "logprobs", "top_logprobs", "n", "user"}
    | {"presence_penalty", "frequency_penalty"}
    | set(SAMPLING_PARAMS)
)
# OpenAI parameters this server knows and does not do: refused with their name unless null (or their no-op value).
UNSUPPORTED = frozenset(
    {
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "response_format",
        "logit_bias",
        "audio",
        "modalities",
        "prediction",
    }
)
MAX_STOP_STRINGS = 16
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list  # as sent (audio parts are decoded when the request is prepared, on a worker thread)
    sampling: dict  # engine settings given by the request (validated)
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0


def check_fields(body, known: frozenset, what: str) -> dict:
    if not isinstance(body, dict):
        raise invalid(f"the {what} body must be a JSON object.")
    for key, value in body.items():
        if key in UNSUPPORTED and value not in (None, [], {}):
            raise invalid(f"{key} is not supported by this server.", key, code="unsupported_parameter")
        if key not in known and key not in UNSUPPORTED:
            raise invalid(f"unknown field {key!r} in the {what}.", key, code="unknown_parameter")
    return body


def sampling_from(body: dict) -> dict:
    """The engine settings the request gives, checked against their ranges (a 400 naming the OpenAI param)."""
    out = {}
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise invalid("give max_tokens or max_completion_tokens, not both.", "max_completion_tokens")
    for param, key in SAMPLING_PARAMS.items():
        value = body.get(param)
        if value is None:
            continue
        if param == "top_k" and value == -1:  # vLLM's "off"
            value = 0
        if key in ("temperature", "top_p", "repetition_penalty") and isinstance(value, int):
            value = float(value)
        try:
            validate_sampling({key: value}, PromptError, prefix="")
        except PromptError as e:
            raise invalid(str(e).replace(key, param, 1), param) from None
        out[key] = value
    return out


def _check_stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid("stop must be a non-empty string or a list of them.", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise invalid(f"stop takes at most {MAX_STOP_STRINGS} strings.", "stop")
    return tuple(stops)


def _check_messages(messages) -> list:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list.", "messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise invalid(f"{where} must be an object with a role of {', '.join(ROLES)}.", where)
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise invalid(f"{where} has unknown fields {sorted(extra)}.", where, code="unknown_parameter")
        content = m.get("content")
        if content is None and m["role"] == "assistant":
            continue
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise invalid(f"{where}.content must be a string or a list of content parts.", f"{where}.content")
        for j, part in enumerate(content):
            _check_part(part, f"{where}.content[{j}]")
    return messages


def _check_part(part, where: str) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        return
    if kind == "audio_url" and isinstance(part.get("audio_url"), (dict, str)):
        return
    if kind in ("text", "input_audio", "audio_url"):
        raise invalid(f"{where}: a {kind} part needs its {kind!r} value.", where)
    raise invalid(f"{where}: content parts are text, input_audio or audio_url, got {kind!r}.", where)


def parse_chat(body) -> ChatRequest:
    body = check_fields(body, CHAT_FIELDS, "chat completion request")
    if not isinstance(body.get("model"), str):
        raise invalid("model must be a string.", "model")
    messages = _check_messages(body.get("messages"))
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid("n must be 1: this server returns one choice per request.", "n")
    for param in ("presence_penalty", "frequency_penalty"):
        if body.get(param) not in (None, 0, 0.0):
            raise invalid(f"{param} is not supported (use repetition_penalty).", param)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise invalid("stream must be true or false.", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("stream_options is only allowed with stream: true.", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
            raise invalid("stream_options takes include_usage.", "stream_options")
        include_usage = bool(options.get("include_usage"))
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise invalid("logprobs must be true or false.", "logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= TOP_LOGPROBS:
            raise invalid(f"top_logprobs must be an integer from 0 to {TOP_LOGPROBS}.", "top_logprobs")
        if top and not logprobs:
            raise invalid("top_logprobs needs logprobs: true.", "top_logprobs")
    return ChatRequest(
        model=body["model"],
        messages=messages,
        sampling=sampling_from(body),
        stop=_check_stop(body.get("stop")),
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs,
        top_logprobs=top or 0,
    )


def engine_messages(messages: list, files: RequestFiles) -> list:
    """OpenAI messages -> the processor's: each audio part becomes {"type": "audio", "audio": a file path}."""
    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                if part["type"] == "text":
                    parts.append({"type": "text", "text": part["text"]})
                elif part["type"] == "input_audio":
                    audio = part["input_audio"]
                    parts.append(
                        {"type": "audio", "audio": files.from_base64(audio.get("data"), audio.get("format"), where)}
                    )
                else:
                    url = part["audio_url"]
                    url = url.get("url") if isinstance(url, dict) else url
                    parts.append({"type": "audio", "audio": files.from_url(url, where)})
            content = parts
        out.append({"role": ROLES[m["role"]], "content": content})
    return out


def default_budget(prompt_tokens: int, max_len: int) -> int:
    """max_new_tokens when the request gives none: the engine's default, or what the context has left."""
    return min(SAMPLING_DEFAULTS["max_new_tokens"], max_len - prompt_tokens)


__all__ = ["APIError", "ChatRequest", "parse_chat", "engine_messages", "check_fields", "sampling_from"]
