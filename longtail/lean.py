"""A request answered on Tornado's HTTPMessageDelegate interface, as JsonHandler would.

Why: a RequestHandler is a large object built for every request (its dicts, the
routing, headers set twice), and on the busiest paths profiles put that machinery near
half of a request's CPU (issue 5). Those paths skip it: in the gateway, held polls and
streams (gateway.transports.lean, lean_stream), WebSocket handshakes and sending a
message (gateway.lean_send); in chatcore, a gateway's batch of sends
(chatcore.api.LeanSends). What they share lives here, so that their answers stay the
handler path's: the headers JsonHandler sets on every answer, its JSON errors and their
log lines, and the access log line; and LeanApplication, which routes a request to its
lean class by method and path before Tornado's routing would.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar, cast

import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection

from longtail.errors import ApiError
from longtail.logs import REQUEST_ID_HEADER, begin_request, log_access, redact_uri
from longtail.web import STATUS_CODES

api_log = logging.getLogger("longtail.web")

# What a lean request is made for: its process's services (the gateway's Services,
# chatcore's Chat).
S = TypeVar("S")

JSON_TYPE = "application/json; charset=utf-8"
JAVASCRIPT = "application/javascript; charset=utf-8"
SERVER = f"TornadoServer/{tornado.version}"


@functools.lru_cache(maxsize=1)
def http_date(second: int) -> str:
    """The Date header for this second, formatted once: thousands of answers a second
    share it (formatting each took 1% of an interval poll's CPU)."""
    return httputil.format_timestamp(second)


class LeanRequest(httputil.HTTPMessageDelegate, Generic[S]):
    """One request of `method`, answered once with `_send` or `_error`."""

    __slots__ = ("_conn", "_ip", "_request", "_request_id", "_started", "_uri", "services")
    method = "GET"
    # Where an uncaught exception is logged: the process's own logger, as its handlers do.
    error_log: ClassVar[logging.Logger] = api_log

    def __init__(self, services: S, conn: HTTP1Connection) -> None:
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

    async def _respond(self) -> None:
        """Answer with what `answer` returns (JSON), or with its error, as JSON too."""
        request = self._request
        assert request is not None
        self._request = None
        try:
            self._request_id = begin_request(request.headers.get(REQUEST_ID_HEADER))
            status, body = await self.answer(request)
        except Exception as exc:
            self._error(exc)
        else:
            self._send(status, self._headers(JSON_TYPE), body)

    async def answer(self, request: httputil.HTTPServerRequest) -> tuple[int, bytes]:
        """The status and JSON body of a request answered by `_respond`."""
        raise NotImplementedError

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
        """JsonHandler.write_error and log_exception, as on the handler path."""
        if isinstance(exc, ApiError):
            api_log.info(
                "%s %s -> %d %s", self.method, self._uri.partition("?")[0], exc.status, exc.code
            )
        else:
            self.error_log.error(
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


# What LeanApplication makes a lean request with: a LeanRequest class, or a partial of one.
LeanFactory = Callable[[Any, HTTP1Connection], httputil.HTTPMessageDelegate]


class LeanApplication(tornado.web.Application):
    """An Application whose requests named in `lean`, by method and path, take the lean
    path; the rest Tornado's routing, as usual."""

    def __init__(
        self,
        services: object,
        lean: Mapping[tuple[str, str], LeanFactory],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._services = services
        self._lean = lean

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Dispatch(self, server_conn, request_conn)


class _Dispatch(httputil.HTTPMessageDelegate):
    """Chooses, from the request line, between a LeanRequest and Tornado's routing."""

    __slots__ = ("_app", "_conn", "_server_conn", "_target")

    def __init__(
        self, app: LeanApplication, server_conn: object, conn: httputil.HTTPConnection
    ) -> None:
        self._app = app
        self._server_conn = server_conn
        self._conn = conn
        self._target: httputil.HTTPMessageDelegate | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        assert isinstance(start_line, httputil.RequestStartLine)
        app = self._app
        lean = app._lean.get((start_line.method, start_line.path.partition("?")[0]))
        if lean is not None:
            self._target = lean(app._services, cast(HTTP1Connection, self._conn))
        else:
            self._target = tornado.web.Application.start_request(app, self._server_conn, self._conn)
        self._server_conn = None
        return self._target.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        assert self._target is not None
        return self._target.data_received(chunk)

    def finish(self) -> None:
        assert self._target is not None
        self._target.finish()

    def on_connection_close(self) -> None:
        if self._target is not None:
            self._target.on_connection_close()
