"""Long-poll (and interval polling with timeout=0): GET /api/events?cursor=&timeout=.

Answers at once when events after the cursor exist, else when one is published, else
with no events at the timeout. Without a cursor: the current cursor, at once.
"""

from __future__ import annotations

from gateway.base import GatewayHandler
from gateway.cursors import events_json, parse_cursor
from gateway.feed import Closed, Feed
from gateway.transports import held, new_feed
from longtail.errors import bad_request
from longtail.settings import Settings
from longtail.wire import Event


class LongPoll(GatewayHandler):
    transport = "longpoll"
    feed: Feed | None = None

    async def get(self) -> None:
        result = await self.poll()
        if result is not None:
            self.finish(self.body_for(*result))

    def body_for(self, events: list[Event], cursor: int) -> bytes:
        return events_json(events, cursor)

    async def poll(self) -> tuple[list[Event], int] | None:
        """The events to answer with and the new cursor; None when the client is gone."""
        user = await self.current_user_or_401()
        cursor = parse_cursor(self.get_query_argument("cursor", None))
        timeout = self._timeout()
        services = self.services
        if cursor is None:
            return [], await services.catchup.head(user.id)
        self.feed = feed = new_feed(services, user, cursor)
        async with held(services, self.transport, feed, self.request.remote_ip or ""):
            try:
                events = await feed.next(timeout)
            except Closed as closed:
                if closed.reason == "gone":
                    return None
                # Draining (the next poll goes elsewhere) or logged out (it gets a 401):
                # answer now, with the cursor.
                services.metrics.closed.labels(closed.reason).inc()
                events = []
        services.metrics.wrote(self.transport, events)
        return events, feed.cursor

    def on_connection_close(self) -> None:
        if self.feed is not None:
            self.feed.mailbox.close("gone")

    def _timeout(self) -> float:
        return poll_timeout(self.get_query_argument("timeout", None), self.services.settings)


def poll_timeout(raw: str | None, settings: Settings) -> float:
    """The wait a poll asked for (`timeout=`, seconds), within the configured bounds."""
    if raw is None or raw == "":
        return settings.poll_timeout
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= settings.poll_timeout_max:
        raise bad_request(
            f"'timeout' must be a number of seconds from 0 to {settings.poll_timeout_max:g}.",
            "invalid_timeout",
        )
    return value
