"""The one boundary error: an HTTP status, a stable machine code, a message for people."""

from __future__ import annotations

from typing import Any

from tornado.web import HTTPError


class ApiError(HTTPError):
    """Raised anywhere a request cannot be served; rendered as {"error": {code, message}}.

    A Tornado HTTPError, so Tornado sends it as the response: expected errors (bad input,
    auth, conflicts) are logged without a traceback.
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str = "Not found.", code: str = "not_found") -> ApiError:
    return ApiError(404, code, message)
