"""What every public gateway handler shares: services, auth, bounded JSON bodies."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest

from gateway.auth import Authenticator, User, request_token
from gateway.catchup import Catchup
from gateway.chatcore_client import ChatcoreClient
from gateway.cursors import events_json, parse_cursor
from gateway.hub import Hub
from gateway.inflight import InFlight
from gateway.limits import ConnectionLimits, RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.presence import Presence
from longtail.errors import ApiError
from longtail.logs import REQUEST_ID_HEADER, begin_request, redact_uri
from longtail.settings import Settings
from longtail.web import MAX_JSON_DEPTH, JsonHandler, body_object


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
    inflight: InFlight = field(default_factory=InFlight)


log = logging.getLogger("longtail.gateway")

# Piggyback: a client that sends its cursor here gets its missed events with any answer.
PIGGYBACK_HEADER = "X-Longtail-Cursor"

# Bodies up to this size are read (and discarded past max_request_bytes) so the client
# gets its 413; a client that stops reading its response while still uploading (most
# do) would otherwise see only a connection reset. Larger ones are cut off by Tornado.
DRAIN_LIMIT = 16 * 1024 * 1024


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
        # The task Tornado runs this request in: shutdown lets it finish.
        task = asyncio.current_task()
        if task is not None:
            self.services.inflight.join(task)
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
        return json_body(self.request, self._chunks, self._size, self.services.settings, max_depth)

    async def current_user_or_401(self) -> User:
        token = request_token(self.request)
        if token is None and self.query_token:
            token = self.get_query_argument("token", None)
        user, self._piggyback = await authenticate(self.services, self.request, token)
        self._user = user
        return user

    async def relay(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> None:
        """Answer with chatcore's status and JSON body (plus any piggybacked events)."""
        status, raw = await self.services.chatcore.request(method, path, body=body, params=params)
        await self.respond(raw, status)

    async def respond(self, raw: bytes, status: int = 200) -> None:
        """Finish with a JSON object body; a client that sent its cursor in
        X-Longtail-Cursor also gets the events it has missed, under "piggyback"."""
        if self._piggyback is not None and self._user is not None:
            raw = await piggybacked(self.services, self._user, self._piggyback, raw)
        self.set_status(status)
        self.finish(raw)


# -- what a request answered without a RequestHandler shares (gateway.lean_send) -------


async def authenticate(
    services: Services, request: HTTPServerRequest, token: str | None
) -> tuple[User, int | None]:
    """The checks every API request makes first, in this order: no cross-site form
    (CSRF), then the session (401), then the piggyback cursor (400), checked before the
    request does anything so that a bad header changes nothing. The user, the cursor."""
    refuse_forms(request)
    user = await services.auth.user(token)
    return user, parse_cursor(request.headers.get(PIGGYBACK_HEADER))


def refuse_forms(request: HTTPServerRequest) -> None:
    """CSRF: a write whose body type is not JSON is refused, whether or not the
    handler reads a body (logout and leaving a room have none). Checked once the
    body is in, so even a client still uploading gets the 415."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    content_type = request.headers.get("Content-Type")
    if content_type is not None and _media_type(content_type) in FORM_TYPES:
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")


def json_body(
    request: HTTPServerRequest,
    chunks: list[bytes],
    size: int,
    settings: Settings,
    max_depth: int = MAX_JSON_DEPTH,
) -> dict[str, Any]:
    """The streamed body (`size` bytes, kept in `chunks` up to the limit) as a JSON
    object, or the 413, 415 or 400 that says what is wrong with it."""
    limit = settings.max_request_bytes
    if size > limit:
        raise ApiError(413, "body_too_large", f"The request body is over {limit} bytes.")
    # Cookie-authenticated writes must be JSON: a cross-site HTML form cannot send
    # application/json without a CORS preflight, which we never grant (CSRF).
    if _media_type(request.headers.get("Content-Type", "")) != JSON_TYPE:
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    request.body = b"".join(chunks)
    return body_object(request.body, max_depth)


async def piggybacked(services: Services, user: User, cursor: int, raw: bytes) -> bytes:
    """A JSON object answer with the events after `cursor` put in front, under
    "piggyback" (or the error that kept them, in the same place)."""
    if not raw.startswith(b"{"):
        return raw
    try:
        events = await services.catchup.after(user.id, cursor)
        extra = events_json(events, events[-1].seq if events else cursor)
    except ApiError as exc:
        extra = json.dumps(exc.body()).encode()
    rest = raw[1:].lstrip()
    return b'{"piggyback":%s%s%s' % (extra, b"" if rest.startswith(b"}") else b",", rest)


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()
