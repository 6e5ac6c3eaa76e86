"""The hub: one subscriber, per-user channels reference-counted, events to mailboxes."""

from __future__ import annotations

import asyncio

import pytest

from gateway.hub import Hub
from gateway.mailbox import Mailbox
from gateway.shards import SingleShard
from longtail.wire import Event, Keys
from tests.waiting import eventually


@pytest.fixture
async def hub(redis_factory, redis_prefix):
    hub = Hub(SingleShard(redis_factory()), Keys(redis_prefix), unsubscribe_grace=0.1)
    await hub.start()
    assert await hub.wait_healthy(5)
    yield hub
    await hub.stop()


async def subscribers(redis, keys: Keys, user_id: int) -> int:
    [(_, count)] = await redis.pubsub_shardnumsub(keys.channel(user_id))
    return count


async def test_events_reach_every_mailbox_of_their_user_only(hub, redis_factory, redis_prefix):
    keys, publisher = Keys(redis_prefix), redis_factory()
    tab1, tab2, other = Mailbox(10), Mailbox(10), Mailbox(10)
    async with hub.listen(1, tab1), hub.listen(1, tab2), hub.listen(2, other):
        await publisher.spublish(keys.channel(1), Event(7, b'{"seq":7}').to_message())
        await eventually(lambda: tab1.ready and bool(tab2._events))
        assert [e.seq for e in tab1.take()] == [7] and [e.seq for e in tab2.take()] == [7]
        assert other.take() == []


async def test_channel_is_subscribed_once_and_dropped_after_the_last_leaves(
    hub, redis_factory, redis_prefix
):
    keys, observer = Keys(redis_prefix), redis_factory()
    async with hub.listen(5, Mailbox(10)):
        assert await subscribers(observer, keys, 5) == 1
        async with hub.listen(5, Mailbox(10)):
            assert await subscribers(observer, keys, 5) == 1
        assert hub.connection_count() == 1
    # Kept for the grace period (the next long-poll is usually on its way), then dropped.
    assert await subscribers(observer, keys, 5) == 1
    await eventually(lambda: _eq(subscribers(observer, keys, 5), 0), what="unsubscribed")
    assert hub.local_users() == []


async def test_a_returning_listener_within_the_grace_keeps_the_subscription(
    hub, redis_factory, redis_prefix
):
    keys, publisher = Keys(redis_prefix), redis_factory()
    async with hub.listen(9, Mailbox(10)):
        pass
    box = Mailbox(10)
    async with hub.listen(9, box):
        box.stale = False
        await asyncio.sleep(0.3)  # longer than the grace: must still be subscribed
        await publisher.spublish(keys.channel(9), Event(1, b"{}").to_message())
        await eventually(lambda: box._events)


async def test_a_failing_connection_callback_does_not_end_the_reader(
    hub, redis_factory, redis_prefix, caplog
):
    """A transport's callback that raises is that connection's bug: the reader logs it
    and goes on delivering to everyone else."""
    keys, publisher = Keys(redis_prefix), redis_factory()
    broken, fine = Mailbox(10), Mailbox(10)

    def fail() -> None:
        raise RuntimeError("a transport bug")

    async with hub.listen(4, broken), hub.listen(5, fine):
        broken.stale = fine.stale = False
        broken.on_ready(fail)
        await publisher.spublish(keys.channel(4), Event(1, b"{}").to_message())
        await publisher.spublish(keys.channel(5), Event(1, b"{}").to_message())
        await eventually(lambda: fine._events)
        assert "could not be handled" in caplog.text


async def test_a_malformed_message_is_ignored_and_the_reader_goes_on(
    hub, redis_factory, redis_prefix
):
    keys, publisher = Keys(redis_prefix), redis_factory()
    box = Mailbox(10)
    async with hub.listen(3, box):
        await publisher.spublish(keys.channel(3), b"garbage")
        await publisher.spublish(keys.channel(3), Event(1, b"{}").to_message())
        await eventually(lambda: box._events)
        assert [e.seq for e in box.take()] == [1]


async def _eq(awaitable, expected) -> bool:
    return await awaitable == expected
