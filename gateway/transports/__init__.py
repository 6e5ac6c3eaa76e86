"""Transports: thin adapters that write a Feed's events in their own framing.

Each one: authenticate, read the cursor, open a Feed, register its mailbox with the hub
for exactly the life of the request (`async with hub.listen`), write what the feed
yields. None of them knows Redis; the hub does not know which transport it feeds.
"""

from __future__ import annotations

from gateway.base import Services
from gateway.feed import Feed
from gateway.mailbox import Mailbox


def new_feed(services: Services, user_id: int, cursor: int) -> Feed:
    return Feed(user_id, cursor, Mailbox(services.settings.mailbox_size), services.catchup)
