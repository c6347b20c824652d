"""`POST /v1/audio/transcriptions` and `/v1/audio/translations` (multipart upload, as OpenAI's audio API), on the
task presets of jobs/tasks.py: the request is the `generate` line {"task": "asr" | "s2tt", "audio": FILE, "lang":
language} (translations: into English), so its greedy text equals `generate`'s for that line, for chat and base
checkpoints of both generations (each preset's own prompt form).

Fields: file, model, language (the spoken language, a preset language code; default en), prompt (replaces the
preset's instruction: the chat turn's text, or the text after the audio of a base model's prompt), response_format
(json | text | verbose_json), temperature, timestamp_granularities[] (segment | word). With "word", the request is
the `srwt` preset (speech recognition with word timestamps) and verbose_json's `words` holds the words and times the
model wrote (Qwen-Audio v1's `<|t.tt|>` tokens, jobs/timestamps.py; empty when the model writes none).
"""

from __future__ import annotations

import time
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from qwen_audio_jax.choices import SAMPLING_DEFAULTS
from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.generation.engine import EngineRequest
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.jobs.tasks import AUDIO, LANGUAGES, expand_task
from qwen_audio_jax.jobs.timestamps import parse_word_timestamps
from qwen_audio_jax.serving.chat import collect, context_error
from qwen_audio_jax.serving.errors import APIError, invalid
from qwen_audio_jax.serving.media import FORMATS, RequestFiles
from qwen_audio_jax.serving.protocol import sampling_from
from qwen_audio_jax.serving.state import Generation, ServerState, new_id
from qwen_audio_jax.serving.text_stream import TextStream

FIELDS = frozenset(
    {"file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]"}
    | {"timestamp_granularities"}
)
RESPONSE_FORMATS = ("json", "text", "verbose_json")


def _record(task: str, path: str, lang: str, prompt: str | None, chat: bool, v1: bool) -> dict:
    record = expand_task({"task": task, "audio": path, "lang": lang, "target": "en"}, chat=chat, v1=v1)
    if not prompt:
        return record
    if chat:
        audio_part = record["messages"][0]["content"][0]
        return {"messages": [{"role": "user", "content": [audio_part, {"type": "text", "text": prompt}]}]}
    if v1:
        return {"prompt": f"<audio>{path}</audio>{prompt}"}
    return {"prompt": AUDIO + prompt, "audio": [path]}


async def _form(request: Request) -> dict:
    try:
        form = await request.form()
    except APIError:  # the body size limit (413), passed on as it is
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
        raise invalid(f"the request must be multipart/form-data with a file ({e}).", code="invalid_form") from None
    fields: dict = {}
    for key, value in form.multi_items():
        if key not in FIELDS:
            raise invalid(f"unknown field {key!r}.", key, code="unknown_parameter")
        if key != "file" and not isinstance(value, str):
            raise invalid(f"{key} must be a text field, not a file.", key)
        if key.startswith("timestamp_granularities"):
            fields.setdefault("timestamp_granularities", []).append(value)
        else:
            fields[key] = value
    upload = fields.get("file")
    if not isinstance(upload, UploadFile):
        raise invalid("file must be an uploaded audio file.", "file")
    fields["data"] = await upload.read()
    fields["suffix"] = Path(upload.filename or "").suffix.lower()
    return fields


def _options(fields: dict) -> dict:
    sampling = {}
    if fields.get("temperature") not in (None, ""):
        try:
            temperature = float(fields["temperature"])
        except ValueError:
            raise invalid("temperature must be a number.", "temperature") from None
        sampling = sampling_from({"temperature": temperature})
    return sampling


async def audio_task(state: ServerState, request: Request, translate: bool) -> Response:
    arrived = time.perf_counter()
    fields = await _form(request)
    state.check_model(fields.get("model"))
    fmt = fields.get("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise invalid(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}.", "response_format")
    lang = fields.get("language") or "en"
    words = "word" in fields.get("timestamp_granularities", [])
    if set(fields.get("timestamp_granularities", [])) - {"word", "segment"}:
        raise invalid("timestamp_granularities takes word and segment.", "timestamp_granularities")
    sampling = _options(fields)
    state.check_open()
    rid = new_id("trsc")
    task = "s2tt" if translate else ("srwt" if words else "asr")
    model, engine = state.model, state.engine
    suffix = fields["suffix"] if fields["suffix"].lstrip(".") in FORMATS else ".wav"

    def prepare():
        with RequestFiles(state.policy, model.config.is_v1) as files:
            path = files.from_bytes(fields["data"], suffix, "file")
            try:
                record = _record(task, path, lang, fields.get("prompt"), model.processor.is_chat, model.config.is_v1)
            except PromptError as e:
                raise invalid(str(e), "language") from None
            prepared = model.processor.prepare(record, max_tokens=engine.max_len - 1)
            seconds = files.seconds[0]
        sampling["max_new_tokens"] = min(SAMPLING_DEFAULTS["max_new_tokens"], engine.max_len - prepared.num_tokens)
        if sampling["max_new_tokens"] <= 0:
            raise context_error(prepared.num_tokens, None, engine.max_len)
        options = GenerationOptions().for_request(sampling, "")
        return EngineRequest(rid, prepared, options), seconds

    state.admitted += 1
    try:
        engine_request, seconds = await state.prepare(prepare)
        gen = Generation(state, engine_request, TextStream(model.tokenizer, (), engine.stop_ids), arrived)
        text, _ = await collect(gen)
    finally:
        state.admitted -= 1
    if fmt == "text":
        return PlainTextResponse(text)
    if fmt == "json":
        return JSONResponse({"text": text})
    out = {
        "task": "translate" if translate else "transcribe",
        "language": LANGUAGES.get(lang, lang).lower(),
        "duration": round(seconds, 3),
        "text": text,
        "segments": [],
    }
    if words:
        tail = engine_request.prepared.token_ids[-1:]  # the srwt prompt's last time token opens the first word
        out["words"] = parse_word_timestamps(gen.finish.token_ids, model.tokenizer, tail) or []
    return JSONResponse(out)
