"""One connection's view of a user's events: a cursor that only moves forward.

Delivery contract: whatever the hub hands over, a feed yields seq cursor+1, cursor+2...
exactly once and in order. Pub/sub is lossy, cursors are not: a seq at or below the
cursor is dropped (a re-publish), a seq beyond cursor+1 means something was missed and
the gap is filled from storage (Catchup), as is everything after a hub reconnect.
A new connection reads storage first, unless its cursor is the head its user's channel
holds (Channel.heard_after): the usual next long-poll, which then costs no Redis read.
"""

from __future__ import annotations

import asyncio

from gateway.catchup import PAGE, Catchup
from gateway.mailbox import Mailbox
from longtail.wire import Event


class Closed(Exception):
    """The connection must end: `reason` is one of 'slow_consumer', 'draining', 'gone'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Feed:
    __slots__ = ("_catchup", "cursor", "mailbox", "user_id")

    def __init__(self, user_id: int, cursor: int, mailbox: Mailbox, catchup: Catchup) -> None:
        self.user_id = user_id
        self.cursor = cursor
        self.mailbox = mailbox
        self._catchup = catchup

    async def next(self, timeout: float) -> list[Event]:
        """The next events after the cursor, advancing it; [] when `timeout` passes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            mailbox = self.mailbox
            if mailbox.closed is not None:
                raise Closed(mailbox.closed)
            if mailbox.overflowed:
                raise Closed("slow_consumer")
            if mailbox.stale:
                mailbox.stale = False
                channel = mailbox.channel
                if channel is not None and channel.heard_after(self.cursor):
                    # The usual next long-poll: the cursor is the head the channel
                    # holds, so anything newer reaches the mailbox; no read needed.
                    events = self._advance(mailbox.take())
                else:
                    mark = channel.mark() if channel is not None else (0, 0)
                    fetched = await self._catchup.after(self.user_id, self.cursor)
                    # A full page means there may be more: keep catching up next round.
                    # So does a resync that came during the read (the hub subscribed
                    # again): what was published before it may be newer than the read.
                    mailbox.stale = mailbox.stale or len(fetched) >= PAGE
                    if not fetched and channel is not None and channel is mailbox.channel:
                        channel.learned(mark, self.cursor)
                    events = self._advance(fetched)
            else:
                events = self._advance(mailbox.take())
            # Ephemeral events (seq 0) follow the durable ones and do not move the cursor.
            events += mailbox.take_ephemeral()
            if events:
                return events
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await mailbox.wait(remaining)

    def _advance(self, events: list[Event]) -> list[Event]:
        """Keep the events that continue the cursor; flag a gap for the next round."""
        fresh: list[Event] = []
        for event in events:
            if event.seq <= self.cursor:
                continue
            if event.seq != self.cursor + 1:
                self.mailbox.stale = True  # a gap: fill it from storage
                break
            fresh.append(event)
            self.cursor = event.seq
        return fresh
