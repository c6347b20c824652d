"""The FastAPI app: routes, the API key, the body size limit, and OpenAI's error JSON for every refusal.

    GET  /health                     200 once every program is compiled (503 before, and while draining)
    GET  /metrics                    Prometheus text (metrics.py)
    GET  /v1/models                  the served model
    POST /v1/chat/completions        chat.py
    POST /v1/audio/transcriptions    transcribe.py
    POST /v1/audio/translations      transcribe.py

With an API key, every /v1 route needs `Authorization: Bearer KEY` (401 otherwise); /health and /metrics stay open
for probes. A body over the size limit is a 413 (refused from its Content-Length before it is read, or as soon as
the bytes read pass the limit).
"""

from __future__ import annotations

import hmac
import logging
import traceback

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from qwen_audio_jax.serving.chat import chat_completions
from qwen_audio_jax.serving.errors import APIError
from qwen_audio_jax.serving.state import ServerState
from qwen_audio_jax.serving.transcribe import audio_task

log = logging.getLogger("qwen_audio_jax.serving")
ROUTES = frozenset(
    {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/audio/transcriptions", "/v1/audio/translations"}
)


class Guard:
    """ASGI middleware: a request body over `limit` bytes is a 413; every answer is counted by path and status (a
    plain ASGI wrapper, so streamed responses and disconnects pass through untouched)."""

    def __init__(self, app, limit: int, metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start":
                path = scope["path"] if scope["path"] in ROUTES else "other"  # a scan of random paths adds no series
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_error(counted, _too_large(self.limit))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _too_large(self.limit)
            return message

        return await self.app(scope, limited, counted)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes.", code="request_too_large")


async def _send_error(send, e: APIError) -> None:
    response = JSONResponse(e.body(), status_code=e.status)
    await send({"type": "http.response.start", "status": e.status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="qwen-audio-jax", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state

    def authorize(request: Request) -> None:
        if state.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
            raise APIError(401, "a valid API key is required: Authorization: Bearer KEY.", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return JSONResponse(APIError(400, str(e)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.error("internal error: %s", "".join(traceback.format_exception(e)))
        body = APIError(500, f"internal error ({type(e).__name__}); the server goes on.", code="internal_error")
        return JSONResponse(body.body(), status_code=500)

    @app.get("/health")
    async def health():
        if state.loop.failed is not None or not state.loop.ready.is_set() or state.draining():
            status = "failed" if state.loop.failed else ("draining" if state.draining() else "starting")
            return JSONResponse({"status": status}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        card = {
            "id": state.served_name,
            "object": "model",
            "created": state.created,
            "owned_by": "qwen-audio-jax",
            "root": str(state.model.model_dir),
            "max_model_len": state.engine.max_len,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorize(request)
        return await chat_completions(state, request)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        authorize(request)
        return await audio_task(state, request, translate=False)

    @app.post("/v1/audio/translations")
    async def translations(request: Request):
        authorize(request)
        return await audio_task(state, request, translate=True)

    return Guard(app, state.max_body_bytes, state.metrics)
