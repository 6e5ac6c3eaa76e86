"""WebSocket: GET /api/events/ws?cursor=, one JSON text frame per event.

Authentication and the cursor's form are checked before the upgrade (plain JSON 4xx).
A cursor that turns out to be ahead of the user's events closes the socket with code
4400 and the error code as reason. Origins: same-origin, or LONGTAIL_ALLOWED_ORIGINS.
Control frames (`ready`, `heartbeat`, `close`) are JSON objects without a `seq`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from gateway.auth import User, request_token
from gateway.base import Services
from gateway.cursors import parse_cursor
from gateway.feed import Closed, Feed
from gateway.transports import held, new_feed
from gateway.transports.stream import control_json
from gateway.transports.timing import jittered, next_wait, retry_after
from longtail.errors import ApiError

log = logging.getLogger("longtail.gateway.ws")

CLOSE_NORMAL = 1000
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_REQUEST = 4400
# Why the server ended a healthy socket; in every case the client resumes by cursor.
CLOSE_CODES = {
    "max_age": CLOSE_NORMAL,
    "draining": 1012,  # service restart: come back (to another gateway)
    "slow_consumer": CLOSE_TRY_AGAIN,
    "logged_out": 4401,  # the session ended: log in again
}


class EventSocket(WebSocketHandler):
    services: Services
    user: User
    feed: Feed | None = None
    pump: asyncio.Task[None] | None = None

    def initialize(self, services: Services) -> None:
        self.services = services

    async def prepare(self) -> None:
        try:
            self.user = await self.services.auth.user(request_token(self.request))
            if self.request.headers.get("Upgrade", "").lower() != "websocket":
                raise ApiError(
                    400, "websocket_required", "This endpoint speaks WebSocket: send an Upgrade."
                )
            self.cursor = parse_cursor(self.get_query_argument("cursor", None))
            # Refuse before the upgrade, as a plain 429/503, when a limit is reached.
            self.services.connections.check(self.user.id, self.request.remote_ip or "")
        except ApiError as exc:
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps(exc.body()))

    def check_origin(self, origin: str) -> bool:
        allowed = self.services.settings.allowed_origins
        if origin.rstrip("/") in allowed:
            return True
        # Same origin as the page's host; a cross-site page must be listed explicitly.
        return urlsplit(origin).netloc.lower() == self.request.host.lower()

    def open(self, *args: Any) -> None:
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        services = self.services
        settings = services.settings
        cursor = self.cursor
        if cursor is None:
            cursor = await services.catchup.head(self.user.id)
        self.feed = feed = new_feed(services, self.user, cursor)
        feed.mailbox.on_overflow = self._cut_slow_consumer
        metrics = services.metrics
        loop = asyncio.get_running_loop()
        try:
            async with held(services, "websocket", feed, self.request.remote_ip or ""):
                events = await feed.next(0)
                await self.write_message(control_json("ready", cursor=cursor))
                end = loop.time() + jittered(settings.stream_max_age)
                while True:
                    for event in events:
                        await self.write_message(event.data)
                    metrics.wrote("websocket", events)
                    wait = next_wait(settings.heartbeat, end - loop.time())
                    if wait <= 0:
                        break
                    events = await feed.next(wait)
                    if not events:
                        # Tornado's pings keep the TCP path alive but pages cannot see
                        # them; this frame lets the client know the stream is alive.
                        await self.write_message(control_json("heartbeat"))
            reason = "max_age"
        except ApiError as exc:
            # The client's mistake (cursor_ahead) or ours (chatcore unavailable): only
            # the latter is worth retrying as is.
            self.close(CLOSE_BAD_REQUEST if exc.status < 500 else CLOSE_TRY_AGAIN, exc.code)
            return
        except Closed as closed:
            if closed.reason in ("gone", "slow_consumer"):  # already cut
                return
            reason = closed.reason
        except WebSocketClosedError:
            return
        except Exception:
            # A bug or a client library's surprise must not leave an open socket that
            # delivers nothing: close it, and the client resumes by cursor.
            log.exception("websocket pump failed")
            self.close(CLOSE_TRY_AGAIN, "internal_error")
            return
        metrics.closed.labels(reason).inc()
        retry_ms = retry_after(reason, settings.drain_spread)
        with suppress(WebSocketClosedError):
            await self.write_message(
                control_json("close", reason=reason, cursor=feed.cursor, retry_ms=retry_ms)
            )
        self.close(CLOSE_CODES.get(reason, CLOSE_NORMAL), reason)

    def _cut_slow_consumer(self) -> None:
        """Mailbox full: the client is not reading. Close now; it resumes by cursor."""
        self.services.metrics.closed.labels("slow_consumer").inc()
        self.close(CLOSE_CODES["slow_consumer"], "slow_consumer")

    def on_message(self, message: str | bytes) -> None:
        """Clients send nothing on this socket; commands go through the REST API."""

    def on_close(self) -> None:
        if self.feed is not None:
            self.feed.mailbox.close("gone")
