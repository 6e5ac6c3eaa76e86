"""A held connection's inbox: what the hub hands over, bounded, until the writer takes it.

The Redis reader never writes to a socket: it appends here and wakes the connection.
A connection that lets `limit` events pile up is a slow consumer; it is closed and
resumes from its cursor, rather than growing the gateway's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from longtail.wire import Event

if TYPE_CHECKING:
    from gateway.hub import Channel

# Ephemeral events waiting for one connection; they are hints, so a few suffice.
EPHEMERAL_LIMIT = 32


class Mailbox:
    __slots__ = (
        "_ephemeral",
        "_events",
        "_waiter",
        "channel",
        "closed",
        "limit",
        "on_overflow",
        "overflowed",
        "session",
        "stale",
    )

    def __init__(self, limit: int, session: str = "") -> None:
        self.limit = limit
        self.session = session  # the login it was opened with (see Hub: revocations)
        # Lists only once something arrives: most held connections idle with none.
        self._events: list[Event] | None = None
        self._ephemeral: list[Event] | None = None
        # Who to wake: a coroutine's future (wait), or a held request's callback
        # (on_ready), which costs no task or frame while the connection idles.
        self._waiter: asyncio.Future[None] | Callable[[], None] | None = None
        # True until the first catch-up, and again whenever pub/sub may have lost
        # something (a reconnect): the feed then reads storage instead of trusting us.
        self.stale = True
        self.overflowed = False
        self.closed: str | None = None
        # Set by a transport: how to cut its connection at once when the limit is hit.
        # The writer is then usually stuck in a write the client does not read, and
        # would only notice the overflow after it.
        self.on_overflow: Callable[[], None] | None = None
        # The hub's channel while joined (Hub.join / Hub.leave): the feed asks it
        # whether a catch-up read can be skipped.
        self.channel: Channel | None = None

    def deliver(self, event: Event) -> None:
        if self.overflowed:
            return  # the connection is being cut; it will resume from its cursor
        if self._events is None:
            self._events = [event]
        elif len(self._events) < self.limit:
            self._events.append(event)
        else:
            self.overflowed = True
            self._events = None  # the client resumes from its cursor; free them now
            if self.on_overflow is not None:
                self.on_overflow()
        self._wake()

    def deliver_ephemeral(self, event: Event) -> None:
        """Typing, presence: the newest matter; past the limit the oldest are dropped."""
        if self._ephemeral is None:
            self._ephemeral = [event]
        else:
            if len(self._ephemeral) >= EPHEMERAL_LIMIT:
                del self._ephemeral[0]
            self._ephemeral.append(event)
        self._wake()

    def take_ephemeral(self) -> list[Event]:
        events, self._ephemeral = self._ephemeral, None
        return events if events is not None else []

    def resync(self) -> None:
        """Pub/sub may have lost something: read storage, whatever the channel heard."""
        self.stale = True
        if self.channel is not None:
            self.channel.forget_head()
        self._wake()

    def close(self, reason: str) -> None:
        """Ask the connection to end (client gone, gateway draining)."""
        self.closed = reason
        self._wake()

    def take(self) -> list[Event]:
        events, self._events = self._events, None
        return events if events is not None else []

    @property
    def ready(self) -> bool:
        return (
            bool(self._events)
            or bool(self._ephemeral)
            or self.stale
            or self.overflowed
            or self.closed is not None
        )

    async def wait(self, timeout: float) -> None:
        """Return when there is something to look at, or after `timeout` seconds."""
        if self.ready or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, as soon as there is something to look at (at once if
        there is already): `wait` for code that holds no coroutine while idle."""
        if self.ready:
            callback()
        else:
            self._waiter = callback

    def cancel_ready(self) -> None:
        """Forget the callback given to `on_ready` (the request ended another way)."""
        if not isinstance(self._waiter, asyncio.Future):
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Future):
            _settle(waiter)
        else:
            self._waiter = None
            waiter()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
