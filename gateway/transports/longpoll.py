"""Long-poll (and interval polling with timeout=0): GET /api/events?cursor=&timeout=.

Answers at once when events after the cursor exist, else when one is published, else
with no events at the timeout. Without a cursor: the current cursor, at once.
"""

from __future__ import annotations

from gateway.base import GatewayHandler
from gateway.feed import Closed, Feed
from gateway.transports import events_json, new_feed, parse_cursor
from longtail.errors import bad_request


class LongPoll(GatewayHandler):
    feed: Feed | None = None

    async def get(self) -> None:
        user = await self.current_user_or_401()
        cursor = parse_cursor(self.get_query_argument("cursor", None))
        timeout = self._timeout()
        services = self.services
        if cursor is None:
            self.finish(events_json([], await services.catchup.head(user.id)))
            return
        self.feed = feed = new_feed(services, user.id, cursor)
        await services.presence.touch(user.id)
        async with services.hub.listen(user.id, feed.mailbox):
            try:
                events = await feed.next(timeout)
            except Closed as closed:
                if closed.reason == "gone":
                    return
                events = []  # draining: answer now, the client polls another gateway
        self.finish(events_json(events, feed.cursor))

    def on_connection_close(self) -> None:
        if self.feed is not None:
            self.feed.mailbox.close("gone")

    def _timeout(self) -> float:
        settings = self.services.settings
        raw = self.get_query_argument("timeout", None)
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
