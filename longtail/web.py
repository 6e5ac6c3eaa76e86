"""The Tornado handler base both services share: JSON in, JSON out, one error shape."""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web

from longtail.errors import ApiError, bad_request
from longtail.logs import REQUEST_ID_HEADER, current_request_id

log = logging.getLogger("longtail.web")

# Deeper than any request body we define. (The C decoder itself stops at the recursion
# limit, so a hostile body costs little before it is refused.)
MAX_JSON_DEPTH = 32

STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
}


class JsonHandler(tornado.web.RequestHandler):
    """Renders every failure as {"error": {"code", "message"}} with the right status."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))

    def json_body(self, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
        """The request body as a JSON object, or a 400 that says what is wrong with it."""
        return body_object(self.request.body, max_depth)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            for name, value in exc.headers.items():
                self.set_header(name, value)
            payload = exc.body()
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            code = STATUS_CODES.get(status_code, "error")
            payload = {"error": {"code": code, "message": exc.log_message or self._reason}}
        else:
            payload = {
                "error": {
                    "code": STATUS_CODES.get(status_code, "error"),
                    "message": "Something went wrong on our side.",
                }
            }
        self.set_header("Content-Type", "application/json; charset=utf-8")
        # send_error cleared the headers set so far; the request id must survive.
        request_id = current_request_id()
        if request_id:
            self.set_header(REQUEST_ID_HEADER, request_id)
        self.finish(json.dumps(payload, separators=(",", ":")))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):
            # Expected: the client's mistake or a known condition, no traceback.
            log.info(
                "%s %s -> %d %s", self.request.method, self.request.path, value.status, value.code
            )
            return
        super().log_exception(typ, value, tb)


def body_object(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A request body that must be a JSON object, or a 400 saying why not."""
    if not raw:
        raise bad_request("The request needs a JSON object body.", "invalid_json")
    return json_object(raw, max_depth)


def json_object(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A client's JSON object (a request body, a WebSocket frame), or a 400 saying why not."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("The body is not valid UTF-8.", "invalid_json") from None
    else:
        text = raw
    try:
        body = _DECODER.decode(text)
    except RecursionError:
        # The C decoder counts its own depth: past the recursion limit, it stops.
        raise bad_request("The JSON body is nested too deeply.", "invalid_json") from None
    except ValueError as exc:
        raise bad_request(f"The body is not valid JSON: {exc}.", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The JSON body must be an object.", "invalid_json")
    if text.count("[") + text.count("{") > max_depth and _depth(body) > max_depth:
        raise bad_request("The JSON body is nested too deeply.", "invalid_json")
    return body


class NotFoundHandler(JsonHandler):
    """Unknown paths answer in the same JSON error shape as everything else."""

    def prepare(self) -> None:
        raise ApiError(404, "not_found", f"No such endpoint: {self.request.path}")


def _depth(value: dict[str, Any] | list[Any]) -> int:
    """How many levels of objects and lists a parsed body has, walked a level at a time
    without recursion. (Scanning the text instead, character by character in Python,
    took 4% of chatcore's CPU: a gateway's batch of more than 16 sends always has more
    brackets than the cheap count above lets by.)"""
    depth = 0
    level: list[Any] = [value]
    while level:
        depth += 1
        below: list[Any] = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
    return depth


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with a repeated key has no one meaning (parsers disagree on which wins)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice")
        result[key] = value
    return result


# One decoder for every request: json.loads with a hook builds a new one per call, which
# showed in the profile of chatcore's send path.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
