"""Server-Sent Events: GET /api/events/stream, resumed by Last-Event-ID or ?cursor=.

Each event is `id: <seq>` + `data: <event JSON>`; a comment line every heartbeat keeps
proxies and home routers (which drop connections idle for 30-60 s) from cutting us off.
"""

from __future__ import annotations

import asyncio

from tornado.iostream import StreamClosedError

from gateway.base import GatewayHandler
from gateway.feed import Closed, Feed
from gateway.transports import new_feed, parse_cursor

# EventSource's reconnect delay (ms) when the stream ends.
RETRY_MS = 1000
# A client that has not taken a write in this long is stuck; drop it, it resumes later.
WRITE_TIMEOUT = 30.0


class EventStream(GatewayHandler):
    feed: Feed | None = None

    async def get(self) -> None:
        user = await self.current_user_or_401()
        services = self.services
        cursor = parse_cursor(
            self.request.headers.get("Last-Event-ID") or self.get_query_argument("cursor", None)
        )
        if cursor is None:
            cursor = await services.catchup.head(user.id)
        self.feed = feed = new_feed(services, user.id, cursor)
        await services.presence.touch(user.id)
        async with services.hub.listen(user.id, feed.mailbox):
            # The first read happens before the headers go out, so a bad cursor is
            # still an ordinary JSON 400.
            events = await feed.next(0)
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("X-Accel-Buffering", "no")
            self.write(b"retry: %d\n: stream open\n\n" % RETRY_MS)
            try:
                while True:
                    for event in events:
                        self.write(b"id: %d\ndata: %s\n\n" % (event.seq, event.data))
                    if not events:
                        self.write(b": heartbeat\n\n")
                    await asyncio.wait_for(self.flush(), WRITE_TIMEOUT)
                    events = await feed.next(services.settings.heartbeat)
            except Closed:
                pass
            except (TimeoutError, StreamClosedError):
                return
        if not self._finished:
            self.finish()

    def on_connection_close(self) -> None:
        if self.feed is not None:
            self.feed.mailbox.close("gone")
