"""The lean path for held streams: SSE here, WebSocket in gateway.transports.websocket.

Why: as for held polls (gateway.transports.lean), an idle stream on the handler path kept
about 20 KiB alive, twice DESIGN.md's 10 KiB: the handler and its dicts, its task with a
chain of coroutine frames, the hub's context managers. Here a held stream is a HeldPoll
(the same request handling, authentication, limits, hub registration and JSON errors
before anything is sent) that writes instead of answering, and while it waits it holds
no task and no frame: the mailbox or its timer calls it back.

HeldStream is what both share: wake on events or at the (jittered) heartbeat, write,
wait until the client took it (WRITE_TIMEOUT at most), end at the (jittered) maximum
age. HeldEventStream keeps EventStream's contract (gateway.transports.sse, whose framing
it uses): the `retry:` and `ready` prelude, `id:`/`data:` events, a `heartbeat`, a
`close` with the cursor and a retry hint at the maximum age, on drain and on logout; a
slow consumer is cut.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from gateway.base import Services
from gateway.feed import Feed
from gateway.transports.lean import IDLE_CONTEXT, HeldPoll, Query, query_argument
from gateway.transports.sse import CONTENT_TYPE, sse_closing, sse_control, sse_frame, sse_prelude
from gateway.transports.stream import WRITE_TIMEOUT, ended_early
from gateway.transports.timing import jittered, next_wait, retry_after
from longtail.wire import Event

log = logging.getLogger("longtail.gateway")


class HeldStream(HeldPoll):
    """A held connection that writes events as they come, until its maximum age."""

    __slots__ = ("_beat_at", "_start_cursor")
    answers_without_cursor = False  # no cursor: stream from the current one

    def __init__(self, services: Services, conn: HTTP1Connection) -> None:
        super().__init__(services, conn)
        self._start_cursor = 0  # for the prelude (`ready`)
        self._beat_at = 0.0  # when the heartbeat timer fires, if nothing comes first

    def lifetime(self, query: Query) -> float:
        return jittered(self.services.settings.stream_max_age)

    def opened(self, feed: Feed) -> None:
        self._start_cursor = feed.cursor
        feed.mailbox.on_overflow = self._cut_slow_consumer

    async def _resume(self) -> None:
        # Woken by the mailbox or the heartbeat timer: look without waiting.
        feed = self._feed
        assert feed is not None
        await self._step(await feed.next(0), asyncio.get_running_loop())

    async def _step(self, events: list[Event], loop: asyncio.AbstractEventLoop) -> None:
        """Write what came (or beat when its time came), then go idle."""
        feed = self._feed
        assert feed is not None
        if events:
            self.services.metrics.wrote(self.transport, events)
        beat = not events and bool(self._beat_at) and loop.time() >= self._beat_at
        if not await self._write_events(events, beat):
            return
        wait = next_wait(self.services.settings.heartbeat, self._deadline - loop.time())
        if wait <= 0:
            self._leave()
            self._end("max_age", feed.cursor)
            return
        self._beat_at = loop.time() + wait
        self._timer = loop.call_later(wait, self._wake, context=IDLE_CONTEXT)
        feed.mailbox.on_ready(self._wake)

    async def _flushed(self, written: Awaitable[None] | None) -> None:
        """Until the client took what was written, for WRITE_TIMEOUT at most."""
        if written is None:
            return
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):  # not wait_for: see Hub.subscribed
                await written
        except TimeoutError:
            log.info(
                "%s: the client took no write for %.0f s; cutting it", self.transport, WRITE_TIMEOUT
            )
            self.services.metrics.closed.labels("slow_consumer").inc()
            raise StreamClosedError() from None  # _run leaves, _error drops the connection

    def _wake(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        super()._wake()

    def _gone(self) -> None:
        task = self._task  # a write the client will never take, a catch-up for nobody
        super()._gone()
        if task is not None:
            task.cancel()

    # -- what each kind of stream does ----------------------------------------------------

    async def _write_events(self, events: list[Event], beat: bool) -> bool:
        """Write the events (after the prelude, the first time; then a heartbeat if
        `beat`); False if the connection was dropped instead."""
        raise NotImplementedError

    def _end(self, reason: str, cursor: int) -> None:
        """The last message: why the stream ends, where to resume, when to come back."""
        raise NotImplementedError

    def _can_end(self, reason: str) -> bool:
        """Whether a stream closed for `reason` can still say so with `_end`; if not,
        whatever it does instead is done."""
        raise NotImplementedError

    def _drop(self) -> None:
        """Close the connection now, with no last word."""
        self._conn.close()  # which drops the close callback: so _gone, here
        self._gone()

    def _closed(self, reason: str) -> None:
        if reason in ("gone", "slow_consumer"):  # nobody to tell
            return
        feed = self._feed
        assert feed is not None
        if self._can_end(reason):
            self._end(reason, feed.cursor)

    def _cut_slow_consumer(self) -> None:
        """Mailbox full: the client is not reading. Drop it now; it resumes by cursor.
        (No last word: it would only queue behind what the client does not read.)"""
        self.services.metrics.closed.labels("slow_consumer").inc()
        self._drop()


class HeldEventStream(HeldStream):
    """One SSE stream, from its request to its `close`."""

    __slots__ = ("_streaming",)
    transport = "sse"

    def __init__(self, services: Services, conn: HTTP1Connection) -> None:
        super().__init__(services, conn)
        self._streaming = False  # the headers are out: errors can no longer be answers

    def cursor_text(self, request: httputil.HTTPServerRequest, query: Query) -> str | None:
        return request.headers.get("Last-Event-ID") or query_argument(query, "cursor")

    async def _write_events(self, events: list[Event], beat: bool) -> bool:
        chunk = b""
        if not self._streaming:
            self._open_stream()
            chunk = sse_prelude(self._start_cursor)
        chunk += b"".join(sse_frame(e) for e in events)
        if beat:
            chunk += sse_control("heartbeat")
        if chunk:
            await self._flushed(self._conn.write(chunk))
        return True

    def _open_stream(self) -> None:
        headers = self._headers(CONTENT_TYPE)
        headers["X-Accel-Buffering"] = "no"
        # Events go out as separate small writes: with Nagle's algorithm on, each one
        # after the first waits for the client's (delayed, ~40 ms) ACK of the last.
        self._conn.stream.set_nodelay(True)
        self._conn.write_headers(httputil.ResponseStartLine("", 200, "OK"), headers)
        self._streaming = True

    def _can_end(self, reason: str) -> bool:
        if not self._streaming:
            # Ended before it began: no stream to close, so a plain answer.
            self._error(ended_early(reason))
            return False
        return True

    def _error(self, exc: Exception) -> None:
        if not self._streaming:
            super()._error(exc)
            return
        if not isinstance(exc, StreamClosedError):
            # Headers are out: no error answer is possible; the client resumes by cursor.
            log.warning("sse stream failed: %s", exc or type(exc).__name__)
        self._conn.close()

    def _end(self, reason: str, cursor: int) -> None:
        services = self.services
        services.metrics.closed.labels(reason).inc()
        retry_ms = retry_after(reason, services.settings.drain_spread)
        self._conn.set_close_callback(None)
        self._conn.write(sse_closing(reason, cursor, retry_ms))
        self._conn.finish()
        self._log(200)
