"""Transports: thin adapters that write a Feed's events in their own framing.

Each one: authenticate, read the cursor, open a Feed, register its mailbox with the hub
for exactly the life of the request (`async with hub.listen`), write what the feed
yields. None of them knows Redis; the hub does not know which transport it feeds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.auth import User
from gateway.base import Services
from gateway.feed import Feed
from gateway.mailbox import Mailbox
from gateway.metrics import POLLS


def new_feed(services: Services, user: User, cursor: int) -> Feed:
    mailbox = Mailbox(services.settings.mailbox_size, user.session)
    return Feed(user.id, cursor, mailbox, services.catchup)


@asynccontextmanager
async def held(services: Services, transport: str, feed: Feed, ip: str) -> AsyncIterator[None]:
    """A connection held for the block: admitted by the connection limits (or refused
    with 429/503 before anything is registered), known to the hub (and so presence) and
    to the metrics.

    The one place a held connection is registered and, on every path out (answered,
    client gone, drained, failed), deregistered.
    """
    metrics = services.metrics
    with services.connections.admitted(feed.user_id, ip):
        gauge = metrics.holding(transport)
        gauge.inc()
        if transport in POLLS:
            metrics.pending_polls.inc()
        try:
            async with services.hub.listen(feed.user_id, feed.mailbox):
                if services.draining:
                    # Arrived on a kept-alive connection after SIGTERM: go elsewhere now.
                    feed.mailbox.close("draining")
                yield
        finally:
            gauge.dec()
            if transport in POLLS:
                metrics.pending_polls.dec()
