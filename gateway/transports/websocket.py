"""WebSocket: GET /api/events/ws?cursor=, one JSON text frame per event.

Authentication and the cursor's form are checked before the upgrade (plain JSON 4xx).
A cursor that turns out to be ahead of the user's events closes the socket with code
4400 and the error code as reason. Origins: same-origin, or LONGTAIL_ALLOWED_ORIGINS.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from gateway.auth import User, request_token
from gateway.base import Services
from gateway.feed import Closed, Feed
from gateway.transports import new_feed, parse_cursor
from longtail.errors import ApiError

log = logging.getLogger("longtail.gateway.ws")

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_REQUEST = 4400


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
            self.cursor = parse_cursor(self.get_query_argument("cursor", None))
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
        cursor = self.cursor
        if cursor is None:
            cursor = await services.catchup.head(self.user.id)
        self.feed = feed = new_feed(services, self.user.id, cursor)
        await services.presence.touch(self.user.id)
        try:
            async with services.hub.listen(self.user.id, feed.mailbox):
                while True:
                    # Keep-alive is Tornado's ping (websocket_ping_interval); this wait
                    # only bounds how long we sleep between looks.
                    for event in await feed.next(services.settings.heartbeat):
                        await self.write_message(event.data)
        except ApiError as exc:
            self.close(CLOSE_BAD_REQUEST, exc.code)
        except Closed as closed:
            if closed.reason != "gone":
                self.close(CLOSE_TRY_AGAIN, closed.reason)
        except WebSocketClosedError:
            pass

    def on_message(self, message: str | bytes) -> None:
        """Clients send nothing on this socket; commands go through the REST API."""

    def on_close(self) -> None:
        if self.feed is not None:
            self.feed.mailbox.close("gone")
