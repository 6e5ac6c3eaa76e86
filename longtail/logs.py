"""Structured logs: one JSON object per line, carrying the request id it belongs to.

The request id comes from the load balancer (`X-Request-ID`, nginx's $request_id) or is
made up, is echoed in the response, and is sent on to chatcore, so one id finds every
line a request caused in every process. What is logged is chosen with care: methods,
paths, status codes and error codes, never message bodies, passwords or tokens.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from tornado.log import access_log

REQUEST_ID_HEADER = "X-Request-ID"
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# What we accept from outside: short, and nothing that could forge a log line.
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class _RequestIds:
    """Ids for requests that came without one: a random prefix per process, then a
    counter, 32 hex digits like a uuid4's. They need to be unique, not secret, and a
    uuid4 per request read the OS's random source each time (2% of an interval poll's
    CPU in the gateway's profile)."""

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


_new_ids = _RequestIds()


def begin_request(incoming: str | None) -> str:
    """Adopt the caller's request id, or make one; later log lines in this task carry it."""
    request_id = incoming if incoming and _SAFE_ID.fullmatch(incoming) else _new_ids.next()
    _request_id.set(request_id)
    return request_id


def current_request_id() -> str | None:
    return _request_id.get()


def request_headers() -> dict[str, str]:
    """Headers that carry the current request id on to another service."""
    request_id = _request_id.get()
    return {REQUEST_ID_HEADER: request_id} if request_id else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, style: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if style == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic announces each of its plugins at INFO; only its migration lines matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def redact_uri(uri: str) -> str:
    """The URI with the value of any `token` parameter (however it is percent-encoded)
    replaced, for logs."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    parts = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        parts.append(f"{name}=[redacted]" if eq and unquote_plus(name) == "token" else pair)
    return f"{path}?{'&'.join(parts)}"


def log_access(status: int, method: str, uri: str, ip: str | None, seconds: float) -> None:
    """Tornado's access log line, minus session tokens passed in URLs (script/iframe)."""
    log_method = access_log.info if status < 400 else access_log.warning
    if status >= 500:
        log_method = access_log.error
    log_method("%d %s %s (%s) %.2fms", status, method, redact_uri(uri), ip, 1000.0 * seconds)
