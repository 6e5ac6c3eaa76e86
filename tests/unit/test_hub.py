"""The hub: one subscriber, per-user channels reference-counted, events to mailboxes."""

from __future__ import annotations

import asyncio

import pytest

from gateway.feed import Feed
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


async def test_a_user_back_before_their_unsubscribe_is_answered_is_subscribed_at_once(
    redis_factory, redis_prefix
):
    """The grace ran out and SUNSUBSCRIBE went out; the user came back before its answer.
    That answer is to our own command, not Redis taking the channel away (a Cluster's
    resharding): the new subscription holds, and the gateway never looks unready."""
    keys, publisher, back = Keys(redis_prefix), redis_factory(), Mailbox(10)
    hub = Hub(
        SingleShard(redis_factory()),
        keys,
        unsubscribe_grace=0.01,
        on_leave=lambda user_id: hub.join(user_id, back),  # SSUBSCRIBE right behind
    )
    await hub.start()
    unready: list[bool] = []

    async def watch() -> None:
        while True:
            unready.append(not hub.healthy)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    try:
        assert await hub.wait_healthy(5)
        unready.clear()
        async with hub.listen(3, Mailbox(10)):
            pass
        await eventually(lambda: back.channel is not None, what="the drop and the return")
        channel = back.channel
        await hub.subscribed(channel, timeout=5)
        await publisher.spublish(keys.channel(3), Event(1, b"{}").to_message())
        # Behind the answers to SUNSUBSCRIBE and SSUBSCRIBE on the same connection:
        await eventually(lambda: back._events, what="the event on the new subscription")
        assert channel.shard is not None and hub.healthy and not any(unready)
    finally:
        watcher.cancel()
        await hub.stop()


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


# -- a new connection at the head the channel holds skips its catch-up read ----------


class Storage:
    """Stands in for Catchup: the user's events up to `upto`; `gate`, when set, holds
    a read (what it answers was decided when it began)."""

    def __init__(self, upto: int) -> None:
        self.upto = upto
        self.reads: list[int] = []
        self.gate: asyncio.Event | None = None

    async def after(self, user_id: int, cursor: int) -> list[Event]:
        self.reads.append(cursor)
        events = [Event(s, b'{"seq":%d}' % s) for s in range(cursor + 1, self.upto + 1)]
        if self.gate is not None:
            await self.gate.wait()
        return events


async def poll(hub: Hub, storage: Storage, cursor: int, timeout: float = 0) -> list[int]:
    """One long-poll's worth: join, catch up (or not), wait, leave."""
    feed = Feed(1, cursor, Mailbox(10), storage)  # type: ignore[arg-type]
    async with hub.listen(1, feed.mailbox):
        return [e.seq for e in await feed.next(timeout)]


async def publish(publisher, keys: Keys, storage: Storage, seq: int) -> None:
    storage.upto = max(storage.upto, seq)
    await publisher.spublish(keys.channel(1), Event(seq, b'{"seq":%d}' % seq).to_message())


async def test_the_next_poll_at_the_head_skips_its_read_and_still_gets_what_follows(
    hub, redis_factory, redis_prefix
):
    keys, publisher, storage = Keys(redis_prefix), redis_factory(), Storage(upto=3)
    assert await poll(hub, storage, 3) == []  # read: nothing after 3
    assert await poll(hub, storage, 3) == [] and storage.reads == [3]  # no second read

    waiting = asyncio.create_task(poll(hub, storage, 3, timeout=5))
    await eventually(lambda: hub.connection_count() == 1)
    await publish(publisher, keys, storage, 4)
    assert await waiting == [4]
    assert await poll(hub, storage, 4) == [] and storage.reads == [3]  # heard 4: still head


async def test_a_publish_that_overtakes_another_sends_the_next_poll_to_storage(
    hub, redis_factory, redis_prefix
):
    keys, publisher, storage = Keys(redis_prefix), redis_factory(), Storage(upto=3)
    async with hub.listen(1, Mailbox(10)):  # keeps the channel while nobody polls
        assert await poll(hub, storage, 3) == []
        storage.upto = 4  # 4 is committed, its publish is late
        await publish(publisher, keys, storage, 5)
        await eventually(lambda: hub.channel(1).head < 0, what="the gap noticed")
        assert await poll(hub, storage, 3) == [4, 5] and storage.reads == [3, 3]


async def test_an_event_heard_during_a_read_keeps_that_read_from_setting_the_head(
    hub, redis_factory, redis_prefix
):
    keys, publisher, storage = Keys(redis_prefix), redis_factory(), Storage(upto=3)
    async with hub.listen(1, Mailbox(10)):
        storage.gate = asyncio.Event()
        first = asyncio.create_task(poll(hub, storage, 3, timeout=5))
        await eventually(lambda: storage.reads == [3], what="the read began")
        before = hub.channel(1).head
        await publish(publisher, keys, storage, 4)  # heard while the read is out
        await eventually(lambda: hub.channel(1).head != before, what="4 heard")
        storage.gate.set()
        assert await first == [4]
        storage.gate = None
        # The read said "nothing after 3", but 4 came meanwhile: 3 is no head.
        assert await poll(hub, storage, 3) == [4] and storage.reads == [3, 3]


async def _eq(awaitable, expected) -> bool:
    return await awaitable == expected


async def test_stop_ends_the_watchdog_even_when_its_ping_answers_as_it_is_cancelled(
    redis_factory, redis_prefix
):
    """Seen in CI: stop() cancelled the watchdog as its ping returned, the watchdog went
    on (Python 3.11's wait_for swallowed that cancellation), found the readers stop() had
    cancelled silent, replaced them, and stop() waited for it forever."""
    hub = Hub(
        SingleShard(redis_factory()), Keys(redis_prefix), unsubscribe_grace=0.1, ping_interval=0.05
    )
    await hub.start()
    assert await hub.wait_healthy(5)
    shards = hub._shards
    ping = shards.publish
    stopping: list[asyncio.Task[None]] = []

    async def ping_then_stop(channel: bytes, data: bytes) -> int:
        answer = await ping(channel, data)
        if not stopping:
            stopping.append(asyncio.create_task(hub.stop()))  # cancels the watchdog next
        return answer

    shards.publish = ping_then_stop  # type: ignore[method-assign]
    await eventually(lambda: bool(stopping), what="the watchdog's ping")
    await asyncio.wait_for(stopping[0], 5)
    readers = [t for t in asyncio.all_tasks() if t.get_name() == "hub-reader"]
    assert all(t.done() for t in readers), "no reader outlives stop()"


async def test_a_stop_that_is_cancelled_says_so(redis_factory, redis_prefix):
    """Cancelling stop() while it waits for its tasks cancels stop(); it used to wait
    under suppress(CancelledError), which swallowed its own cancellation too."""
    hub = Hub(SingleShard(redis_factory()), Keys(redis_prefix), unsubscribe_grace=0.1)
    await hub.start()
    assert await hub.wait_healthy(5)
    stopping = asyncio.create_task(hub.stop())
    await asyncio.sleep(0)  # stop() has cancelled its tasks and waits for them now
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled()
    await hub.stop()  # a second stop() finishes the job
