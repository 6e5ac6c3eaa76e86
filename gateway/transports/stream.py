"""What every HTTP streaming transport shares: one response that stays open.

The stream: check the cursor (a bad one is still a plain JSON 4xx), send the headers and
a prelude (`ready` with the cursor), then events as they come, a heartbeat when nothing
came for a (jittered) heartbeat interval, and a clean `close` at the (jittered) maximum
lifetime, on drain, or for a slow consumer. The client resumes from its cursor.
Subclasses only frame bytes: `prelude`, `frame`, `control`, `epilogue`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tornado.iostream import StreamClosedError

from gateway.base import GatewayHandler
from gateway.cursors import parse_cursor
from gateway.feed import Closed, Feed
from gateway.transports import held, new_feed
from gateway.transports.timing import jittered, next_wait, retry_after
from longtail.errors import ApiError
from longtail.wire import Event

# A client that has not taken a write in this long is stuck: drop it, it resumes later.
WRITE_TIMEOUT = 30.0


def control_json(kind: str, **fields: Any) -> bytes:
    """A control message: like an event but without a seq (never counted, never stored)."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":")).encode()


class StreamTransport(GatewayHandler):
    transport = "stream"
    content_type = "application/octet-stream"
    feed: Feed | None = None
    _cut: asyncio.Future[None] | None = None

    def cursor_argument(self) -> str | None:
        return self.get_query_argument("cursor", None)

    def prelude(self, cursor: int) -> bytes:
        return self.control("ready", cursor=cursor)

    def frame(self, event: Event) -> bytes:
        raise NotImplementedError

    def control(self, kind: str, **fields: Any) -> bytes:
        raise NotImplementedError

    def closing(self, reason: str, cursor: int, retry_ms: int) -> bytes:
        """The last message: why the stream ends, where to resume, when to come back."""
        return self.control("close", reason=reason, cursor=cursor, retry_ms=retry_ms)

    def epilogue(self) -> bytes:
        return b""

    async def get(self) -> None:
        user = await self.current_user_or_401()
        services = self.services
        cursor = parse_cursor(self.cursor_argument())
        if cursor is None:
            cursor = await services.catchup.head(user.id)
        self.feed = feed = new_feed(services, user, cursor)
        feed.mailbox.on_overflow = self._cut_slow_consumer
        settings = services.settings
        metrics = services.metrics
        loop = asyncio.get_running_loop()
        async with held(services, self.transport, feed, self.request.remote_ip or ""):
            try:
                events = await feed.next(0)  # before the headers: a bad cursor is a JSON 400
            except Closed as closed:
                # Ended before it began: no stream to close, so a plain answer.
                if closed.reason == "gone":
                    return
                raise ended_early(closed.reason) from None
            self.set_header("Content-Type", self.content_type)
            self.set_header("X-Accel-Buffering", "no")
            # Events go out as separate small writes: with Nagle's algorithm on, each one
            # after the first waits for the client's (delayed, ~40 ms) ACK of the last.
            # (RequestHandler has no set_nodelay; the connection's stream does, and
            # Tornado resets it when the response ends.)
            self.request.connection.stream.set_nodelay(True)  # type: ignore[union-attr]
            self.write(self.prelude(cursor))
            end = loop.time() + jittered(settings.stream_max_age)
            reason = "max_age"
            try:
                while True:
                    for event in events:
                        self.write(self.frame(event))
                    await self._flush_or_cut()
                    metrics.wrote(self.transport, events)
                    wait = next_wait(settings.heartbeat, end - loop.time())
                    if wait <= 0:
                        break
                    events = await feed.next(wait)
                    if not events:
                        self.write(self.control("heartbeat"))
            except Closed as closed:
                if closed.reason in ("gone", "slow_consumer"):  # already cut
                    return
                reason = closed.reason
            except StreamClosedError:
                return
        metrics.closed.labels(reason).inc()
        retry_ms = retry_after(reason, settings.drain_spread)
        self.write(self.closing(reason, feed.cursor, retry_ms) + self.epilogue())
        self.finish()

    async def _flush_or_cut(self) -> None:
        """Wait for the client to take what was written, for WRITE_TIMEOUT at most, or
        until the connection is cut as a slow consumer (Tornado drops a pending write's
        future when its connection closes, so the flush alone would never return)."""
        if self._cut is None:
            self._cut = asyncio.get_running_loop().create_future()
        flushed = self.flush()
        done, _ = await asyncio.wait(
            {flushed, self._cut}, timeout=WRITE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if flushed not in done:
            raise StreamClosedError()

    def _cut_slow_consumer(self) -> None:
        """The client stopped reading and its mailbox is full: drop the connection now
        (it resumes from its cursor) instead of holding its backlog in memory."""
        self.services.metrics.closed.labels("slow_consumer").inc()
        if self._cut is not None and not self._cut.done():
            self._cut.set_result(None)
        self.request.connection.close()  # type: ignore[union-attr]

    def on_connection_close(self) -> None:
        if self.feed is not None:
            self.feed.mailbox.close("gone")


def ended_early(reason: str) -> ApiError:
    """The answer for a stream closed before its headers went out."""
    if reason == "logged_out":
        return ApiError(401, "unauthorized", "This session has ended: log in again.")
    # Draining (SIGTERM, or Redis lost): another gateway will take the client.
    return ApiError(
        503, reason, "This server is handing its clients over; try again.", {"Retry-After": "1"}
    )
