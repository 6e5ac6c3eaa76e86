"""The lean path for held polls: GET /api/events and /api/events/jsonp without a RequestHandler.

Why: a held long-poll spends nearly all its life idle, and on Tornado's full handler path
an idle one kept about 20 KiB alive (the handler and its dicts, the parsed request, the
handler's task and a chain of coroutine frames, the hub's context managers). Tornado's
own connection (HTTP1Connection, IOStream, its serving task) is about 7.5 KiB of that
and is the floor; DESIGN.md allows 10 KiB in all. So here a held poll is one slotted
object on Tornado's HTTPMessageDelegate interface, and while it waits it holds no task
and no frame: the mailbox calls it back (Mailbox.on_ready) or its timer fires. Work that
needs I/O (authentication, catch-up) runs in a short task that ends before the wait.

The contract is LongPoll's and JsonpPoll's, answer for answer: same statuses, JSON
errors, headers (request id, nosniff, no-store, Etag), access log line, metrics,
connection limits, hub registration and drain behaviour. Only GET takes this path;
anything else goes to the regular handlers (which answer 405 as before).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import re
from collections.abc import Awaitable, Callable

import tornado.web
from tornado import httputil
from tornado.escape import utf8
from tornado.http1connection import HTTP1Connection

from gateway.auth import User, request_token
from gateway.base import PIGGYBACK_HEADER, Services
from gateway.cursors import events_json, parse_cursor, script_safe, valid_callback
from gateway.feed import Closed, Feed
from gateway.hub import Channel
from gateway.lean_request import LeanRequest
from gateway.metrics import POLLS
from gateway.transports import new_feed
from gateway.transports.longpoll import poll_timeout
from longtail.errors import ApiError
from longtail.lean import JAVASCRIPT, JSON_TYPE
from longtail.logs import REQUEST_ID_HEADER, begin_request
from longtail.wire import Event

# An empty context, shared by every idle poll's timer (see HeldPoll._step).
IDLE_CONTEXT = contextvars.Context()
# What RequestHandler.get_query_argument does to a value (tornado.web).
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f]")
ETAGS = re.compile(rb'\*|(?:W/)?"[^"]*"')


Query = dict[str, list[bytes]]


def query_argument(query: Query, name: str) -> str | None:
    """RequestHandler.get_query_argument(name, None): the last value, decoded and stripped."""
    values = query.get(name)
    if not values:
        return None
    raw = values[-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise tornado.web.HTTPError(400, f"Invalid unicode in {name}: {raw[:40]!r}") from None
    return CONTROL_CHARS.sub(" ", text).strip()


class HeldPoll(LeanRequest):
    """One GET long-poll, from its request to its answer."""

    __slots__ = (
        "_admitted",
        "_again",
        "_channel",
        "_deadline",
        "_feed",
        "_if_none_match",
        "_over",
        "_task",
        "_timer",
    )
    transport = "longpoll"
    query_token = False

    def __init__(self, services: Services, conn: HTTP1Connection) -> None:
        super().__init__(services, conn)
        self._feed: Feed | None = None
        # The hub's handle while registered (Hub.join), None before and after.
        self._channel: Channel | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self._deadline = 0.0
        # The step running now, if any.
        # Steps never overlap: two at once could both answer, and the second answer,
        # left on a kept-alive connection, is read by the next request on it (another
        # user's, behind a proxy that pools its upstream connections).
        self._task: asyncio.Future[None] | None = None
        self._again = False  # woken during a step: look again when it ends
        # Left (answered, ended, gone): nothing more to do. Also set by a client that
        # goes while _start still awaits, before there is a mailbox to close.
        self._over = False

    # -- HTTPMessageDelegate: the request arrives --------------------------------------

    def noted(self, headers: httputil.HTTPHeaders) -> None:
        self._if_none_match = headers.get("If-None-Match")

    def data_received(self, chunk: bytes) -> None:
        """A GET's body means nothing here, as on the handler path: dropped."""

    def finish(self) -> None:
        # Like a stream_request_body handler's get(): once the whole request is in.
        self._conn.set_close_callback(self._gone)
        self._step_with(self._start)

    def on_connection_close(self) -> None:
        """Gone while still sending its request: nothing was started."""

    # -- the work ---------------------------------------------------------------------

    def prepare(self, query: dict[str, list[bytes]]) -> None:
        """Checks made before authentication (JSONP: the callback's name)."""

    async def _start(self) -> None:
        request = self._request
        assert request is not None
        self._request_id = begin_request(request.headers.get(REQUEST_ID_HEADER))
        query = request.query_arguments
        self.prepare(query)
        services = self.services
        token = request_token(request)
        if token is None and self.query_token:
            token = query_argument(query, "token")
        user = await services.auth.user(token)
        if self._over:
            raise Closed("gone")  # the client left meanwhile: nothing to register
        # Checked before the request does anything, so a bad header changes nothing.
        parse_cursor(request.headers.get(PIGGYBACK_HEADER))
        cursor = parse_cursor(self.cursor_text(request, query))
        lifetime = self.lifetime(query)
        self.authenticated(request, user)
        self._request = None  # what is left to hold is ours: no headers, no arguments
        if cursor is None:
            head = await services.catchup.head(user.id)
            if self._over:
                raise Closed("gone")
            if self.answers_without_cursor:
                self._answer([], head)
                return
            cursor = head
        self._feed = feed = new_feed(services, user, cursor)
        services.connections.acquire(user.id, self._ip)
        self._admitted = True
        self.opened(feed)
        services.metrics.holding(self.transport).inc()
        if self.transport in POLLS:
            services.metrics.pending_polls.inc()
        hub = services.hub
        self._channel = channel = hub.join(user.id, feed.mailbox)
        await hub.subscribed(channel)
        if services.draining:
            # Arrived on a kept-alive connection after SIGTERM: go elsewhere now.
            feed.mailbox.close("draining")
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + lifetime
        await self._step(await feed.next(0), loop)
        if not self._over:
            # Held from here on; a poll answered at once had no need to shed them.
            _shed(request.headers)

    # -- what a held stream does differently (gateway.transports.lean_stream) -----------

    answers_without_cursor = True  # a poll without a cursor gets the current one at once

    def cursor_text(self, request: httputil.HTTPServerRequest, query: Query) -> str | None:
        return query_argument(query, "cursor")

    def lifetime(self, query: Query) -> float:
        """Seconds the request may be held: the poll's timeout."""
        return poll_timeout(query_argument(query, "timeout"), self.services.settings)

    def authenticated(self, request: httputil.HTTPServerRequest, user: User) -> None:
        """Checks of the request's headers once the user and cursor are known (a
        WebSocket's handshake)."""

    def opened(self, feed: Feed) -> None:
        """The connection limits admitted the feed; the hub registration follows."""

    async def _resume(self) -> None:
        begin_request(self._request_id)
        feed = self._feed
        assert feed is not None
        loop = asyncio.get_running_loop()
        await self._step(await feed.next(max(0.0, self._deadline - loop.time())), loop)

    async def _step(self, events: list[Event], loop: asyncio.AbstractEventLoop) -> None:
        """Answer with `events`, or go idle until the mailbox or the timer calls back."""
        feed = self._feed
        assert feed is not None
        remaining = self._deadline - loop.time()
        if events or remaining <= 0:
            self._leave()
            self.services.metrics.wrote(self.transport, events)
            self._answer(events, feed.cursor)
            return
        if self._timer is None:
            # Not in this task's context: the timer would keep it (and its request id
            # variable) alive for the whole wait. _resume sets the request id again.
            self._timer = loop.call_later(remaining, self._expire, context=IDLE_CONTEXT)
        feed.mailbox.on_ready(self._wake)

    def _expire(self) -> None:
        self._timer = None
        self._wake()

    def _wake(self) -> None:
        """The mailbox has something, or the time came: look, in a short task (or, if a
        step is running, as soon as it ends)."""
        feed = self._feed
        if feed is None or self._over:
            return
        feed.mailbox.cancel_ready()
        if self._task is not None:
            self._again = True
            return
        self._step_with(self._resume)

    def _step_with(self, work: Callable[[], Awaitable[None]]) -> None:
        """Start a step (`work` in _run), the only one running."""
        task = self._task = self.services.inflight.start(self._run(work))
        task.add_done_callback(self._step_ended)

    def _step_ended(self, task: asyncio.Future[None]) -> None:
        # A task cancelled before it began (woken in the turn its connection closed, or
        # at a stop's deadline) runs none of _run, so none of its clean-up: leave here
        # (_leave acts once; a step cancelled while it ran has left already).
        if task.cancelled():
            self._leave()

    def _gone(self) -> None:
        """The client left. Held: its mailbox closes, which wakes the request to leave.
        Still starting (authentication or the current cursor are being looked up, which
        may take a Redis or chatcore round trip): _start looks at `_over` after each
        await, so a request nobody waits for is never registered, counted or held."""
        feed = self._feed
        if feed is not None:
            feed.mailbox.close("gone")
        else:
            self._over = True

    async def _run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run a step; whatever it raises ends the request the way Tornado would.

        The step's coroutine is made here, not by the caller: a task cancelled before it
        ever ran (a stop's deadline) must not leave one behind that was never awaited.
        """
        try:
            await work()
        except asyncio.CancelledError:
            self._leave()
            raise
        except Closed as closed:
            self._leave()
            self._closed(closed.reason)
        except Exception as exc:
            self._leave()
            self._error(exc)
        finally:
            self._task = None
        # Only after a step that ended (not one cancelled, or closed with its loop).
        if self._again:
            self._again = False
            self._wake()

    def _closed(self, reason: str) -> None:
        """The mailbox was closed: the client left, the gateway drains, a logout."""
        if reason == "gone":
            # The handler path logged its usual line for a client that left.
            self._log(200)
            return
        # Draining (the next poll goes elsewhere) or logged out (it gets a 401): answer
        # now, with the cursor.
        self.services.metrics.closed.labels(reason).inc()
        feed = self._feed
        assert feed is not None
        self.services.metrics.wrote(self.transport, [])
        self._answer([], feed.cursor)

    def _leave(self) -> None:
        """Deregister from the hub, the gauges and the limits: exactly once. No step
        runs after this one."""
        self._over = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if self._admitted:
            self._admitted = False
            feed = self._feed
            assert feed is not None
            feed.mailbox.cancel_ready()
            services = self.services
            channel, self._channel = self._channel, None
            if channel is not None:
                services.hub.leave(channel, feed.mailbox)
            services.metrics.holding(self.transport).dec()
            if self.transport in POLLS:
                services.metrics.pending_polls.dec()
            services.connections.release(feed.user_id, self._ip)

    # -- the answer -------------------------------------------------------------------

    def body_for(self, events: list[Event], cursor: int) -> tuple[str, bytes]:
        return JSON_TYPE, events_json(events, cursor)

    def _answer(self, events: list[Event], cursor: int) -> None:
        content_type, body = self.body_for(events, cursor)
        headers = self._headers(content_type)
        status = 200
        # RequestHandler.finish: an Etag on a 200 GET, and a 304 when it matches.
        etag = f'"{hashlib.sha1(body).hexdigest()}"'
        headers["Etag"] = etag
        if _etag_matches(etag, self._if_none_match):
            status, body = 304, b""
            del headers["Content-Type"]
        self._send(status, headers, body)


class HeldJsonp(HeldPoll):
    """JsonpPoll's contract: `/**/NAME({...});`, errors too once the name is known."""

    __slots__ = ("callback",)
    transport = "jsonp"
    query_token = True

    def __init__(self, services: Services, conn: HTTP1Connection) -> None:
        super().__init__(services, conn)
        self.callback = ""

    def prepare(self, query: dict[str, list[bytes]]) -> None:
        self.callback = valid_callback(query_argument(query, "callback"))

    def body_for(self, events: list[Event], cursor: int) -> tuple[str, bytes]:
        return JAVASCRIPT, self._call(events_json(events, cursor))

    def error_body(self, exc: Exception) -> bytes | None:
        if not self.callback or not isinstance(exc, ApiError):
            return None
        return self._call(json.dumps(exc.body()).encode())

    def _call(self, payload: bytes) -> bytes:
        return b"/**/%s(%s);" % (self.callback.encode(), script_safe(payload))


def _etag_matches(etag: str, if_none_match: str | None) -> bool:
    """RequestHandler.check_etag_header."""
    if not if_none_match:
        return False
    etags = ETAGS.findall(utf8(if_none_match))
    if not etags:
        return False
    if etags[0] == b"*":
        return True
    computed = utf8(etag)
    return any(e.removeprefix(b"W/") == computed for e in etags)


def _shed(headers: httputil.HTTPHeaders) -> None:
    """Drop the request's headers once read, all but Connection.

    Tornado keeps the parsed headers for as long as the request is held (the
    connection's and its serving frame's references), yet when it writes the answer it
    reads only Connection (keep-alive for HTTP/1.0). A browser's cookies and user agent
    are often a kilobyte per held poll.
    """
    connection = headers.get("Connection")
    # Emptied in place (Tornado holds this object) by its own constructor: the clear()
    # of MutableMapping pops one header at a time through HTTPHeaders' Python methods,
    # 4.5 µs for a browser's nine headers here against 0.5.
    httputil.HTTPHeaders.__init__(headers)
    if connection is not None:
        headers["Connection"] = connection
