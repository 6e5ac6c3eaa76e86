"""Publishing committed events to Redis, and the outbox that makes it crash-safe.

Delivery contract: events are published only after commit. Each commit also wrote an
outbox row per event; the row is deleted once Redis took the publish. Rows left behind
(a crash between commit and publish, Redis down) are re-published by the sweeper: at
start, then every few seconds. A re-publish may duplicate a publish that did happen;
gateways drop any seq at or below a connection's cursor, so clients see it once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete, select, tuple_

from chatcore.db import Database
from chatcore.eventlog import Delivery
from chatcore.models import Event as EventRow
from chatcore.models import Outbox, utcnow
from longtail.wire import Event, Keys, ephemeral_message

log = logging.getLogger("longtail.chatcore.outbox")

# How long an outbox row may wait before the sweeper takes over its publish: well above
# a normal commit-to-publish gap (milliseconds), so the sweeper rarely duplicates one.
SWEEP_AFTER = timedelta(seconds=3)
SWEEP_INTERVAL = 2.0
SWEEP_BATCH = 500
# The head key outlives the buffer: an idle user's long-polls still find their head in
# Redis instead of asking chatcore every time.
HEAD_TTL = 7 * 24 * 3600


class Publisher:
    def __init__(self, db: Database, redis: Redis, keys: Keys, buffer_size: int, buffer_ttl: int):
        self._db = db
        self._redis = redis
        self._keys = keys
        self._buffer_size = buffer_size
        self._buffer_ttl = buffer_ttl
        self._published: list[tuple[int, int]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def publish(self, deliveries: list[Delivery]) -> bool:
        """Buffer and PUBLISH each event; False (outbox keeps them) when Redis fails."""
        if not deliveries:
            return True
        pipe = self._redis.pipeline(transaction=False)
        for d in deliveries:
            buf = self._keys.buffer(d.user_id)
            # The buffer is written before the PUBLISH: whoever sees the message can
            # also find it in the buffer.
            pipe.zadd(buf, {d.event.data: d.event.seq})
            pipe.zremrangebyrank(buf, 0, -self._buffer_size - 1)
            pipe.expire(buf, self._buffer_ttl)
            pipe.set(self._keys.head(d.user_id), d.event.seq, ex=HEAD_TTL)
            pipe.spublish(self._keys.channel(d.user_id), d.event.to_message())
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("publish failed, the outbox will retry: %s", exc)
            return False
        self._published.extend((d.user_id, d.event.seq) for d in deliveries)
        self._wake.set()
        return True

    async def publish_ephemeral(self, user_ids: list[int], data: bytes) -> None:
        """Typing, presence: published once, lost if nobody listens, never retried."""
        if not user_ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.spublish(self._keys.channel(user_id), ephemeral_message(data))
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.info("ephemeral publish dropped: %s", exc)

    async def sweep(self, older_than: timedelta = SWEEP_AFTER) -> int:
        """Re-publish outbox rows older than `older_than`; returns how many went out."""
        cutoff = utcnow() - older_than
        async with self._db.transaction() as tx:
            rows = (
                await tx.execute(
                    select(EventRow.user_id, EventRow.seq, EventRow.payload)
                    .join(
                        Outbox, (Outbox.user_id == EventRow.user_id) & (Outbox.seq == EventRow.seq)
                    )
                    .where(Outbox.created_at <= cutoff)
                    .order_by(EventRow.user_id, EventRow.seq)
                    .limit(SWEEP_BATCH)
                )
            ).all()
        deliveries = [Delivery(uid, Event(seq, payload.encode())) for uid, seq, payload in rows]
        if deliveries and await self.publish(deliveries):
            log.info("outbox: re-published %d event(s)", len(deliveries))
            await self._forget()
            return len(deliveries)
        return 0

    async def _forget(self) -> None:
        """Delete the outbox rows of events Redis has taken, in one statement per batch."""
        while self._published:
            batch, self._published = self._published[:SWEEP_BATCH], self._published[SWEEP_BATCH:]
            async with self._db.transaction() as tx:
                await tx.execute(
                    delete(Outbox).where(tuple_(Outbox.user_id, Outbox.seq).in_(batch))
                )

    async def start(self) -> None:
        # Whatever a previous process committed but never published goes out first.
        while await self.sweep(older_than=timedelta(0)) == SWEEP_BATCH:
            pass
        self._tasks = [
            asyncio.create_task(self._forget_loop()),
            asyncio.create_task(self._sweep_loop()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._forget()
        except Exception:
            log.warning("outbox: could not clear published rows at shutdown", exc_info=True)

    async def _forget_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._forget()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox: could not delete published rows")
                await asyncio.sleep(SWEEP_INTERVAL)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox: sweep failed")
