"""OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}` with the HTTP status that goes with it.

Every refusal the server makes is an `APIError`; a user error of the package (`QwenAudioError`: bad audio, a prompt
over the context, an out-of-range value) becomes a 400 with its one-sentence message.
"""

from __future__ import annotations

from qwen_audio_jax.errors import QwenAudioError
from qwen_audio_jax.text.budget import TooLongError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400: the request is malformed or asks for something this server does not do."""
    return APIError(400, message, param=param, code=code)


def from_user_error(e: QwenAudioError, param: str | None = None) -> APIError:
    """A package user error (audio, prompt, range) as a 400, its message unchanged."""
    code = "context_length_exceeded" if isinstance(e, TooLongError) else None
    return APIError(400, str(e), param=param, code=code)
