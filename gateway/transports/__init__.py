"""Transports: thin adapters that write a Feed's events in their own framing.

Each one: authenticate, read the cursor, open a Feed, register its mailbox with the hub
for exactly the life of the request (`async with hub.listen`), write what the feed
yields. None of them knows Redis; the hub does not know which transport it feeds.
"""

from __future__ import annotations

from gateway.base import Services
from gateway.feed import Feed
from gateway.mailbox import Mailbox
from longtail.errors import bad_request
from longtail.wire import Event


def parse_cursor(raw: str | None) -> int | None:
    """A cursor is the last seq the client has (0 for none yet); absent means 'now'."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise bad_request(
            f"The cursor must be a non-negative integer, not {raw[:40]!r}.", "invalid_cursor"
        )
    return int(raw)


def new_feed(services: Services, user_id: int, cursor: int) -> Feed:
    return Feed(user_id, cursor, Mailbox(services.settings.mailbox_size), services.catchup)


def events_json(events: list[Event], cursor: int) -> bytes:
    """`{"events": [...], "cursor": N}` with the stored event JSON spliced in as is."""
    return b'{"events":[%s],"cursor":%d}' % (b",".join(e.data for e in events), cursor)
