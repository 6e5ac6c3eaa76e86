"""Catch-up from a cursor: the user's hot buffer in Redis first, chatcore when older.

Never a scan: the buffer is a sorted set read by score, chatcore reads its event log by
primary key. Either way the answer starts at cursor + 1 with no gap, or chatcore decides.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.chatcore_client import ChatcoreClient
from longtail.wire import Event, Keys

log = logging.getLogger("longtail.gateway.catchup")

PAGE = 500
# As long as chatcore keeps it (chatcore.outbox.HEAD_TTL): a week of an idle user's polls.
HEAD_TTL = 7 * 24 * 3600


class Catchup:
    def __init__(self, redis: Redis, keys: Keys, chatcore: ChatcoreClient) -> None:
        self._redis = redis
        self._keys = keys
        self._chatcore = chatcore
        self.from_buffer = 0
        self.from_chatcore = 0

    async def after(self, user_id: int, cursor: int) -> list[Event]:
        """Events with seq > cursor, in order, without gaps (maybe empty); a cursor
        ahead of the user's newest event is chatcore's 400."""
        try:
            buffered = await self._from_buffer(user_id, cursor)
        except RedisError as exc:
            log.warning("hot buffer unavailable, reading chatcore: %s", exc)
            buffered = None
        if buffered is not None:
            self.from_buffer += 1
            return buffered
        self.from_chatcore += 1
        events, head = await self._chatcore.events_after(user_id, cursor)
        await self._remember_head(user_id, head)
        return events

    async def head(self, user_id: int) -> int:
        """The user's newest seq: where a client without a cursor starts."""
        try:
            cached = await self._redis.get(self._keys.head(user_id))
        except RedisError:
            cached = None
        # The head key may trail chatcore's by an unpublished event, never lead it;
        # starting a little early only means receiving that event.
        if cached is not None:
            return int(cached)
        head = await self._chatcore.head(user_id)
        await self._remember_head(user_id, head)
        return head

    async def _remember_head(self, user_id: int, head: int) -> None:
        """Cache what chatcore said, so idle users' polls stop reaching it.

        Only when no head is cached (NX): a concurrent publish may have set a newer one.
        A value that is stale by then is still a lower bound, which is all readers
        assume: a cursor above it is checked with chatcore, never refused on its word.
        """
        try:
            await self._redis.set(self._keys.head(user_id), head, ex=HEAD_TTL, nx=True)
        except RedisError as exc:
            log.info("could not cache the head: %s", exc)

    async def _from_buffer(self, user_id: int, cursor: int) -> list[Event] | None:
        """The buffered events after `cursor`, or None when the buffer cannot tell."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrangebyscore(
            self._keys.buffer(user_id), f"({cursor}", "+inf", start=0, num=PAGE, withscores=True
        )
        pipe.get(self._keys.head(user_id))
        rows, head = await pipe.execute()
        if rows:
            first, last = int(rows[0][1]), int(rows[-1][1])
            if first != cursor + 1 or last != cursor + len(rows):
                # Trimmed past the cursor (older than the buffer holds), or a hole: an
                # event's publish failed (the outbox retries it later) and a later one's
                # went out. Pub/sub brings the retry, never that later event again, so
                # the run before the hole would leave a held stream short of it.
                return None
            return [Event(int(score), data) for data, score in rows]
        if head is None or cursor != int(head):
            # Nothing buffered after the cursor, yet the head says otherwise (or is
            # gone with a Redis restart): only chatcore knows.
            return None
        return []
