"""What every public gateway handler shares: services, auth, bounded JSON bodies."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import tornado.web
from tornado.log import access_log

from gateway.auth import Authenticator, User, request_token
from gateway.catchup import Catchup
from gateway.chatcore_client import ChatcoreClient
from gateway.cursors import events_json, parse_cursor
from gateway.hub import Hub
from gateway.limits import ConnectionLimits, RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.presence import Presence
from longtail.errors import ApiError
from longtail.logs import REQUEST_ID_HEADER, begin_request
from longtail.settings import Settings
from longtail.web import MAX_JSON_DEPTH, JsonHandler


@dataclass
class Services:
    """Everything a gateway handler may use; built once by gateway.app.Gateway."""

    settings: Settings
    hub: Hub
    catchup: Catchup
    chatcore: ChatcoreClient
    auth: Authenticator
    presence: Presence
    metrics: GatewayMetrics
    rates: RateLimiter
    connections: ConnectionLimits
    draining: bool = False


log = logging.getLogger("longtail.gateway")

# Piggyback: a client that sends its cursor here gets its missed events with any answer.
PIGGYBACK_HEADER = "X-Longtail-Cursor"

# Bodies up to this size are read (and discarded past max_request_bytes) so the client
# gets its 413; a client that stops reading its response while still uploading (most
# do) would otherwise see only a connection reset. Larger ones are cut off by Tornado.
DRAIN_LIMIT = 16 * 1024 * 1024


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


# Writes must not come from a cross-site form: a form (or any request a page may send
# without a CORS preflight, which we never grant) can only carry these body types.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
JSON_TYPE = "application/json"


@tornado.web.stream_request_body
class GatewayHandler(JsonHandler):
    """Bodies are streamed and kept only up to the limit, so a huge one costs no memory."""

    services: Services
    # Script-tag and iframe transports cannot send headers: they may pass ?token=.
    query_token = False
    _user: User | None = None
    _piggyback: int | None = None

    def initialize(self, services: Services) -> None:
        self.services = services
        self._chunks: list[bytes] = []
        self._size = 0

    def prepare(self) -> None:
        self.set_header(
            REQUEST_ID_HEADER, begin_request(self.request.headers.get(REQUEST_ID_HEADER))
        )

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):
            super().log_exception(typ, value, tb)
            return
        if isinstance(value, tornado.web.HTTPError):
            # Tornado's refusals (a method the path does not take): the client's mistake,
            # answered in our JSON shape; no traceback, and the path without its query.
            log.info("%s %s -> %d", self.request.method, self.request.path, value.status_code)
            return
        # Tornado's own line would include the URI, and with it a ?token=.
        log.error(
            "Uncaught exception %s %s",
            self.request.method,
            redact_uri(self.request.uri or ""),
            exc_info=(typ, value, tb),
        )

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.services.settings.max_request_bytes:
            self._chunks.append(chunk)

    def json_body(self, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
        limit = self.services.settings.max_request_bytes
        if self._size > limit:
            raise ApiError(413, "body_too_large", f"The request body is over {limit} bytes.")
        # Cookie-authenticated writes must be JSON: a cross-site HTML form cannot send
        # application/json without a CORS preflight, which we never grant (CSRF).
        if _media_type(self.request.headers.get("Content-Type", "")) != JSON_TYPE:
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
        self.request.body = b"".join(self._chunks)
        return super().json_body(max_depth)

    async def current_user_or_401(self) -> User:
        token = request_token(self.request)
        if token is None and self.query_token:
            token = self.get_query_argument("token", None)
        self.refuse_forms()
        user = await self.services.auth.user(token)
        # Checked before the request does anything, so a bad header changes nothing.
        self._piggyback = parse_cursor(self.request.headers.get(PIGGYBACK_HEADER))
        self._user = user
        return user

    def refuse_forms(self) -> None:
        """CSRF: a write whose body type is not JSON is refused, whether or not the
        handler reads a body (logout and leaving a room have none). Checked once the
        body is in, so even a client still uploading gets the 415."""
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return
        content_type = self.request.headers.get("Content-Type")
        if content_type is not None and _media_type(content_type) in FORM_TYPES:
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")

    async def relay(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> None:
        """Answer with chatcore's status and JSON body (plus any piggybacked events)."""
        status, raw = await self.services.chatcore.request(method, path, body=body, params=params)
        await self.respond(raw, status)

    async def respond(self, raw: bytes, status: int = 200) -> None:
        """Finish with a JSON object body; a client that sent its cursor in
        X-Longtail-Cursor also gets the events it has missed, under "piggyback"."""
        if self._piggyback is not None and self._user is not None and raw.startswith(b"{"):
            try:
                events = await self.services.catchup.after(self._user.id, self._piggyback)
                cursor = events[-1].seq if events else self._piggyback
                extra = events_json(events, cursor)
            except ApiError as exc:
                extra = json.dumps(exc.body()).encode()
            rest = raw[1:].lstrip()
            raw = b'{"piggyback":%s%s%s' % (extra, b"" if rest.startswith(b"}") else b",", rest)
        self.set_status(status)
        self.finish(raw)


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()
