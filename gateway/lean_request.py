"""A request answered on Tornado's HTTPMessageDelegate interface, as JsonHandler would.

Why: a RequestHandler is a large object built for every request (its dicts, the
routing, headers set twice), and on the gateway's busiest paths profiles put that
machinery near half of a request's CPU (issue 5). Those paths skip it: held polls and
streams (gateway.transports.lean, lean_stream), WebSocket handshakes, and sending a
message (gateway.lean_send). What they share lives here, so that their answers stay
the handler path's: the headers JsonHandler sets on every answer, its JSON errors and
their log lines, and the access log line.
"""

from __future__ import annotations

import functools
import json
import logging
import time

import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection

from gateway.base import Services, log_access, redact_uri
from longtail.errors import ApiError
from longtail.logs import REQUEST_ID_HEADER
from longtail.web import STATUS_CODES

log = logging.getLogger("longtail.gateway")
api_log = logging.getLogger("longtail.web")

JSON_TYPE = "application/json; charset=utf-8"
JAVASCRIPT = "application/javascript; charset=utf-8"
SERVER = f"TornadoServer/{tornado.version}"


@functools.lru_cache(maxsize=1)
def http_date(second: int) -> str:
    """The Date header for this second, formatted once: thousands of answers a second
    share it (formatting each took 1% of an interval poll's CPU)."""
    return httputil.format_timestamp(second)


class LeanRequest(httputil.HTTPMessageDelegate):
    """One request of `method`, answered once with `_send` or `_error`."""

    __slots__ = ("_conn", "_ip", "_request", "_request_id", "_started", "_uri", "services")
    method = "GET"

    def __init__(self, services: Services, conn: HTTP1Connection) -> None:
        self.services = services
        self._conn = conn
        # The parsed request, until the work no longer needs it.
        self._request: httputil.HTTPServerRequest | None = None
        self._request_id = ""  # set by begin_request in the request's task

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        """Parse the request; what the access log needs is noted now."""
        assert isinstance(start_line, httputil.RequestStartLine)  # a server's delegate
        self._request = request = httputil.HTTPServerRequest(
            connection=self._conn, start_line=start_line, headers=headers
        )
        self._started = time.time()
        self._uri = start_line.path
        self._ip = request.remote_ip or ""
        self.noted(headers)

    def noted(self, headers: httputil.HTTPHeaders) -> None:
        """Headers a subclass needs after the request itself is let go."""

    def _headers(self, content_type: str) -> httputil.HTTPHeaders:
        """The headers JsonHandler sets on every answer, and the request id."""
        headers = httputil.HTTPHeaders(
            {
                "Server": SERVER,
                "Content-Type": content_type,
                "Date": http_date(int(time.time())),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            }
        )
        if self._request_id:
            headers[REQUEST_ID_HEADER] = self._request_id
        return headers

    def _error(self, exc: Exception) -> None:
        """JsonHandler.write_error and GatewayHandler.log_exception, as on the handler path."""
        if isinstance(exc, ApiError):
            api_log.info(
                "%s %s -> %d %s", self.method, self._uri.partition("?")[0], exc.status, exc.code
            )
        else:
            log.error(
                "Uncaught exception %s %s",
                self.method,
                redact_uri(self._uri),
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        custom = self.error_body(exc)
        if custom is not None:
            status = exc.status if isinstance(exc, ApiError) else 500
            # Tornado's send_error cleared the headers first: no request id here.
            headers = self._headers(JAVASCRIPT)
            del headers[REQUEST_ID_HEADER]
            self._send(status, headers, custom)
            return
        headers = self._headers(JSON_TYPE)
        if isinstance(exc, ApiError):
            status = exc.status
            for name, value in exc.headers.items():
                headers[name] = value
            payload = exc.body()
        elif isinstance(exc, tornado.web.HTTPError) and exc.status_code < 500:
            status = exc.status_code
            reason = httputil.responses.get(status, "Unknown")
            code = STATUS_CODES.get(status, "error")
            payload = {"error": {"code": code, "message": exc.log_message or reason}}
        else:
            status = exc.status_code if isinstance(exc, tornado.web.HTTPError) else 500
            payload = {
                "error": {
                    "code": STATUS_CODES.get(status, "error"),
                    "message": "Something went wrong on our side.",
                }
            }
        self._send(status, headers, json.dumps(payload, separators=(",", ":")).encode())

    def error_body(self, exc: Exception) -> bytes | None:
        """A transport's own error body (JSONP calls its callback); None: the JSON one."""
        return None

    def _send(self, status: int, headers: httputil.HTTPHeaders, body: bytes) -> None:
        if status != 304:
            headers["Content-Length"] = str(len(body))
        start = httputil.ResponseStartLine("", status, httputil.responses.get(status, "Unknown"))
        self._conn.set_close_callback(None)
        self._conn.write_headers(start, headers, body)
        self._conn.finish()
        self._log(status)

    def _log(self, status: int) -> None:
        log_access(status, self.method, self._uri, self._ip, time.time() - self._started)
