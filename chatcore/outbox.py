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
import time
from datetime import timedelta

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import RedisError
from sqlalchemy import select

from chatcore.db import Database
from chatcore.eventlog import Delivery, forget
from chatcore.models import Event as EventRow
from chatcore.models import Outbox, utcnow
from longtail.wire import Event, Keys, ephemeral_message

log = logging.getLogger("longtail.chatcore.outbox")

# How long an outbox row may wait before the sweeper takes over its publish: well above
# a normal commit-to-publish gap (milliseconds), so the sweeper rarely duplicates one.
SWEEP_AFTER = timedelta(seconds=3)
SWEEP_INTERVAL = 2.0
SWEEP_BATCH = 500
# How long published outbox rows wait for a send transaction to delete them along with
# its own work before a transaction of their own does: far below SWEEP_AFTER, so the
# sweeper does not re-publish them.
FORGET_AFTER = 0.2
# The head key outlives the buffer: an idle user's long-polls still find their head in
# Redis instead of asking chatcore every time.
HEAD_TTL = 7 * 24 * 3600

# Deliveries, in one command: for each, buffer the event (trimmed to the newest
# ARGV[1], expiring ARGV[2] s after the last one), move the head forward (expiring
# after ARGV[3] s), then SPUBLISH, so whoever sees the message can also find it in the
# buffer. Forward only: the sweep re-publishes an event whose publish failed after newer
# ones went out (a failover), and a head moved back would send every poll of that user
# at the true head to chatcore until their next event.
# KEYS: each delivery's buffer and head; ARGV: those three settings, then each
# delivery's event, seq, channel and message, in the order given, which keeps each
# user's events in seq order. A script, not five pipelined commands per event: in the
# profile of the send path, building and parsing those took a quarter of chatcore's
# CPU; and many deliveries per call, not one: under gateways' batched sends, packing a
# call per delivery was half of what publishing cost. EVAL, not EVALSHA: a Cluster
# pipeline cannot load scripts, and Redis caches the body. A user's keys and channel
# share its hash tag, so a call for one user runs in one slot.
DELIVER = """
local keep, ttl, head_ttl = -tonumber(ARGV[1]) - 1, ARGV[2], ARGV[3]
for i = 1, #KEYS / 2 do
  local buffer, head, at = KEYS[2 * i - 1], KEYS[2 * i], 4 * i
  redis.call('ZADD', buffer, ARGV[at + 1], ARGV[at])
  redis.call('ZREMRANGEBYRANK', buffer, 0, keep)
  redis.call('EXPIRE', buffer, ttl)
  if (tonumber(redis.call('GET', head)) or -1) < tonumber(ARGV[at + 1]) then
    redis.call('SET', head, ARGV[at + 1], 'EX', head_ttl)
  else
    redis.call('EXPIRE', head, head_ttl)
  end
  redis.call('SPUBLISH', ARGV[at + 2], ARGV[at + 3])
end
return #KEYS / 2
"""
# Deliveries per DELIVER call on one Redis server: Redis runs nothing else while a
# script runs, so a large batch (a sweep, a room's fan-out) takes several calls, still
# one round trip. On a Cluster a script may touch one slot only: a call per delivery.
DELIVERIES_PER_CALL = 128


def queue(
    pipe: Pipeline | ClusterPipeline,
    keys: Keys,
    deliveries: list[Delivery],
    buffer_size: int,
    buffer_ttl: int,
    now: float,
) -> None:
    """Queue these deliveries (DELIVER calls) on a pipeline."""
    step = 1 if isinstance(pipe, ClusterPipeline) else DELIVERIES_PER_CALL
    for start in range(0, len(deliveries), step):
        names: list[str] = []
        values: list[bytes | int | str] = [buffer_size, buffer_ttl, HEAD_TTL]
        for d in deliveries[start : start + step]:
            names += (keys.buffer(d.user_id), keys.head(d.user_id))
            values += (d.event.data, d.event.seq, keys.channel(d.user_id), d.event.to_message(now))
        pipe.eval(DELIVER, len(names), *names, *values)


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
        queue(pipe, self._keys, deliveries, self._buffer_size, self._buffer_ttl, time.time())
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
        await self.publish_ephemerals([(user_ids, data)])

    async def publish_ephemerals(self, items: list[tuple[list[int], bytes]]) -> None:
        """`publish_ephemeral` for each (user_ids, data), in one round trip, in order."""
        if not any(user_ids for user_ids, _ in items):
            return
        pipe = self._redis.pipeline(transaction=False)
        for user_ids, data in items:
            message = ephemeral_message(data)
            for user_id in user_ids:
                pipe.spublish(self._keys.channel(user_id), message)
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

    def take_published(self) -> list[tuple[int, int]]:
        """Outbox rows Redis has taken, for the caller's transaction to delete (the next
        send batch's, which saves a transaction and its commit per batch); if that
        transaction fails, `give_back` them."""
        batch, self._published = self._published[:SWEEP_BATCH], self._published[SWEEP_BATCH:]
        return batch

    def give_back(self, rows: list[tuple[int, int]]) -> None:
        self._published[:0] = rows

    async def _forget(self) -> None:
        """Delete the outbox rows of events Redis has taken, in one statement per batch."""
        while self._published:
            batch = self.take_published()
            try:
                async with self._db.sql_transaction() as tx:
                    await forget(tx, batch)
            except BaseException:
                self.give_back(batch)
                raise

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
        """Deletes what no send transaction took along within FORGET_AFTER (chatcore is
        idle, or the events came from friend requests, rooms, the sweeper)."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(FORGET_AFTER)
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
