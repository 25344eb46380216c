"""OpenAI-format error responses.

OpenAI clients (the `openai` package, LangChain, ...) read `{"error": {"message", "type", "param",
"code"}}` and map the HTTP status to exception classes (401 AuthenticationError, 429 RateLimitError,
400 BadRequestError, ...). Every refusal the endpoint itself makes goes through `error_body`.
Messages never echo keys or payload bytes.
"""

from __future__ import annotations

import json

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class RequestError(Exception):
    """A client mistake the endpoint reports as a 4xx with a clear message."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_json_bytes(status: int, message: str, **kwargs) -> bytes:
    return json.dumps(error_body(status, message, **kwargs)).encode()


def json_response(err: RequestError, headers: dict[str, str] | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(
        error_body(err.status, err.message, code=err.code, param=err.param), status_code=err.status, headers=headers
    )
