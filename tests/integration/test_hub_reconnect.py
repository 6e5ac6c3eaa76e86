"""The hub survives losing Redis: it reconnects, re-subscribes, and nothing is lost.

Runs against a Redis reached through a proxy the test can cut: a fakeredis TCP server
by default, the real Redis when LONGTAIL_TEST_REDIS_URL is set.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from chatcore.db import Database
from chatcore.eventlog import Delivery
from chatcore.outbox import Publisher
from gateway.app import subscriber_options
from gateway.catchup import Catchup
from gateway.feed import Feed
from gateway.hub import Hub
from gateway.mailbox import Mailbox
from gateway.shards import SingleShard
from longtail.wire import Event, Keys
from tests.proxy import FaultyProxy
from tests.waiting import eventually


class EmptyChatcore:
    """chatcore for a user with no events yet; later catch-ups come from the Redis buffer."""

    async def events_after(self, user_id: int, after: int) -> tuple[list[Event], int]:
        assert after == 0, "only the first read, before anything is buffered, reaches chatcore"
        return [], 0


class GatedShard(SingleShard):
    """One server; once `gated`, the next subscriber connection's (S)SUBSCRIBE and
    SUNSUBSCRIBE calls wait for their gate, so a test can act while the hub awaits."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.gated = False
        self.in_ssubscribe, self.in_sunsubscribe = asyncio.Event(), asyncio.Event()
        self.ssubscribe_gate, self.sunsubscribe_gate = asyncio.Event(), asyncio.Event()

    def pubsub(self, shard: str) -> PubSub:
        pubsub = super().pubsub(shard)
        if not self.gated:
            return pubsub
        self.gated = False
        ssubscribe, sunsubscribe = pubsub.ssubscribe, pubsub.sunsubscribe

        async def gated_ssubscribe(*names: bytes) -> None:
            self.in_ssubscribe.set()
            await self.ssubscribe_gate.wait()
            await ssubscribe(*names)

        async def gated_sunsubscribe(*names: bytes) -> None:
            self.in_sunsubscribe.set()
            await self.sunsubscribe_gate.wait()
            await sunsubscribe(*names)

        pubsub.ssubscribe = gated_ssubscribe  # type: ignore[method-assign]
        pubsub.sunsubscribe = gated_sunsubscribe  # type: ignore[method-assign]
        return pubsub


@pytest.fixture
async def rig(redis_target, redis_prefix, database_url):
    host, port = redis_target
    proxy = await FaultyProxy(host, port).start()
    keys = Keys(redis_prefix)
    direct = Redis(host=host, port=port)
    db = Database(database_url)
    publisher = Publisher(db, direct, keys, buffer_size=100, buffer_ttl=60)
    subscriber = Redis.from_url(proxy.url, **subscriber_options())
    hub = Hub(GatedShard(subscriber), keys, unsubscribe_grace=0.1, ping_interval=0.2)
    await hub.start()
    assert await hub.wait_healthy(5)
    catchup = Catchup(direct, keys, EmptyChatcore())  # type: ignore[arg-type]
    yield proxy, hub, publisher, catchup
    await hub.stop()
    await subscriber.aclose()
    await proxy.stop()
    await direct.delete(keys.buffer(1), keys.head(1))
    await direct.aclose()
    await db.close()


def event(seq: int) -> Delivery:
    return Delivery(1, Event(seq, b'{"seq":%d,"type":"message"}' % seq))


async def test_events_published_while_the_subscriber_is_down_arrive_after_reconnect(rig):
    proxy, hub, publisher, catchup = rig
    feed = Feed(1, 0, Mailbox(50), catchup)
    async with hub.listen(1, feed.mailbox):
        assert await feed.next(0) == []
        await publisher.publish([event(1)])
        assert [e.seq for e in await feed.next(5)] == [1]

        proxy.refuse = True
        proxy.cut()
        await eventually(lambda: not hub.healthy, what="hub notices the cut")
        await publisher.publish([event(2), event(3)])  # nobody is subscribed: pub/sub loses it
        proxy.refuse = False

        # Nothing else is published: only the hub's resync after re-subscribing can
        # bring 2 and 3 (no later event reveals the gap).
        assert [e.seq for e in await feed.next(10)] == [2, 3]
        assert hub.reconnects >= 1 and hub.healthy
        await publisher.publish([event(4)])
        assert [e.seq for e in await feed.next(5)] == [4]


async def test_a_poll_arriving_after_a_reconnect_reads_what_was_published_meanwhile(rig):
    """Before the cut the channel held the head, so a poll there skipped its read; what
    it heard then may have a hole now, so the next one reads storage."""
    proxy, hub, publisher, catchup = rig
    async with hub.listen(1, Mailbox(50)):  # keeps the channel through the cut
        first = Feed(1, 0, Mailbox(50), catchup)
        async with hub.listen(1, first.mailbox):
            assert await first.next(0) == []
            await publisher.publish([event(1)])
            assert [e.seq for e in await first.next(5)] == [1]
        assert hub.channel(1).heard_after(1)

        proxy.refuse = True
        proxy.cut()
        await eventually(lambda: not hub.healthy, what="hub notices the cut")
        await publisher.publish([event(2), event(3)])  # nobody is subscribed: lost
        proxy.refuse = False
        await eventually(lambda: hub.healthy, deadline=10, what="reconnected")

        second = Feed(1, 1, Mailbox(50), catchup)
        async with hub.listen(1, second.mailbox):
            assert [e.seq for e in await second.next(0)] == [2, 3]


async def test_a_channel_placed_while_a_reconnect_unsubscribes_is_subscribed_too(rig):
    """A reconnect subscribes what its shard carries, round by round, and unsubscribes
    what left meanwhile; a user who arrives during one of those awaits must be
    subscribed before the connection counts as up (after that, arrivals send their own
    SSUBSCRIBE)."""
    proxy, hub, _, catchup = rig
    shard = hub._shards  # the rig's GatedShard
    async with hub.listen(1, Mailbox(50)):
        leaving = Mailbox(50)
        channel = hub.join(2, leaving)
        shard.gated = True
        proxy.cut()
        await asyncio.wait_for(shard.in_ssubscribe.wait(), 10)
        hub.leave(channel, leaving)  # user 2 leaves while the reconnect subscribes them
        await eventually(lambda: hub.channel(2) is None, what="user 2's channel dropped")
        shard.ssubscribe_gate.set()  # user 2 was sent: the next round unsubscribes it
        await asyncio.wait_for(shard.in_sunsubscribe.wait(), 10)
        feed = Feed(3, 0, Mailbox(50), catchup)
        hub.join(3, feed.mailbox)  # arrives now, while the reconnect awaits
        shard.sunsubscribe_gate.set()
        await eventually(lambda: hub.healthy, what="reconnected")
        channel = hub.channel(3)
        await hub.subscribed(channel)
        assert channel.confirmed, "user 3's channel subscribed on the new connection"
        hub.leave(channel, feed.mailbox)


async def test_watchdog_replaces_a_subscriber_that_went_silent(rig):
    proxy, hub, publisher, catchup = rig
    feed = Feed(1, 0, Mailbox(50), catchup)
    async with hub.listen(1, feed.mailbox):
        assert await feed.next(0) == []
        before = hub.reconnects
        proxy.blackhole = True  # the TCP connection stays up; nothing gets through
        await eventually(lambda: not hub.healthy, what="watchdog notices the silence")
        await publisher.publish([event(1)])
        proxy.blackhole = False
        proxy.cut()  # what a kernel keepalive would do eventually; the watchdog did not wait
        assert [e.seq for e in await feed.next(10)] == [1]
        await eventually(lambda: hub.healthy and hub.reconnects > before, what="reconnected")
