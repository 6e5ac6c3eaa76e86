"""A feed yields each seq once, in order, filling gaps from storage."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.catchup import PAGE
from gateway.feed import Closed, Feed
from gateway.mailbox import Mailbox
from longtail.wire import Event


def ev(seq: int) -> Event:
    return Event(seq, json.dumps({"seq": seq}).encode())


class Storage:
    """Stands in for Catchup: the user's committed events."""

    def __init__(self, upto: int) -> None:
        self.upto = upto
        self.reads: list[int] = []

    async def after(self, user_id: int, cursor: int) -> list[Event]:
        self.reads.append(cursor)
        return [ev(s) for s in range(cursor + 1, self.upto + 1)]


def feed(cursor: int, storage: Storage, limit: int = 10) -> Feed:
    return Feed(1, cursor, Mailbox(limit), storage)  # type: ignore[arg-type]


async def test_first_read_catches_up_from_storage():
    storage = Storage(upto=3)
    f = feed(1, storage)
    assert [e.seq for e in await f.next(1)] == [2, 3]
    assert f.cursor == 3 and storage.reads == [1]


async def test_live_events_continue_and_duplicates_are_dropped():
    storage = Storage(upto=2)
    f = feed(2, storage)
    assert await f.next(0) == []
    for seq in (2, 3, 3, 4):  # a re-published 2 and 3: the outbox may do that
        f.mailbox.deliver(ev(seq))
    assert [e.seq for e in await f.next(1)] == [3, 4]
    assert storage.reads == [2]


async def test_a_gap_is_filled_from_storage():
    storage = Storage(upto=5)
    f = feed(2, storage)
    f.mailbox.stale = False
    f.mailbox.deliver(ev(3))
    f.mailbox.deliver(ev(5))  # 4 was lost in pub/sub
    assert [e.seq for e in await f.next(1)] == [3]
    assert [e.seq for e in await f.next(1)] == [4, 5]
    assert storage.reads == [3]


async def test_resync_rereads_storage():
    storage = Storage(upto=1)
    f = feed(1, storage)
    assert await f.next(0) == []
    storage.upto = 3
    f.mailbox.resync()
    assert [e.seq for e in await f.next(1)] == [2, 3]


class SlowStorage(Storage):
    """A read that answers with what storage held when it went out, once released: the
    hub runs meanwhile, as during a Redis round trip."""

    def __init__(self, upto: int) -> None:
        super().__init__(upto)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def after(self, user_id: int, cursor: int) -> list[Event]:
        held = await super().after(user_id, cursor)
        self.started.set()
        await self.release.wait()
        return held


async def test_a_resync_during_a_catch_up_read_reads_again():
    storage = SlowStorage(upto=3)
    f = feed(1, storage)
    reading = asyncio.create_task(f.next(0))
    await storage.started.wait()
    storage.upto = 5  # published while the read was out, before the hub subscribed again
    f.mailbox.resync()
    storage.release.set()
    assert [e.seq for e in await reading] == [2, 3]
    assert [e.seq for e in await f.next(0)] == [4, 5]
    assert storage.reads == [1, 3]


async def test_waits_until_an_event_or_the_timeout():
    f = feed(0, Storage(upto=0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await f.next(0.2) == []
    assert loop.time() - started >= 0.19
    loop.call_later(0.05, f.mailbox.deliver, ev(1))
    assert [e.seq for e in await f.next(5)] == [1]
    assert loop.time() - started < 2


async def test_overflow_closes_as_slow_consumer():
    f = feed(0, Storage(upto=0), limit=3)
    assert await f.next(0) == []
    for seq in range(1, 6):
        f.mailbox.deliver(ev(seq))
    with pytest.raises(Closed, match="slow_consumer"):
        await f.next(1)


async def test_close_wakes_a_waiting_feed():
    f = feed(0, Storage(upto=0))
    asyncio.get_running_loop().call_later(0.05, f.mailbox.close, "gone")
    with pytest.raises(Closed, match="gone"):
        await f.next(10)


async def test_a_long_catch_up_comes_in_pages_until_it_is_done():
    storage = PagedStorage(upto=1200)
    f = feed(0, storage)
    got: list[int] = []
    while len(got) < 1200:
        batch = await f.next(0)
        assert batch, "every round makes progress"
        got += [e.seq for e in batch]
    assert got == list(range(1, 1201)) and storage.reads == [0, 500, 1000]


class PagedStorage(Storage):
    async def after(self, user_id: int, cursor: int) -> list[Event]:
        self.reads.append(cursor)
        return [ev(s) for s in range(cursor + 1, min(self.upto, cursor + PAGE) + 1)]


def test_mailbox_calls_back_once_when_something_arrives() -> None:
    mailbox = Mailbox(4)
    mailbox.stale = False
    calls: list[int] = []
    mailbox.on_ready(lambda: calls.append(1))
    assert calls == []
    mailbox.deliver(ev(1))
    mailbox.deliver(ev(2))
    assert calls == [1]  # once: the callback is forgotten when called
    assert [e.seq for e in mailbox.take()] == [1, 2] and mailbox.take() == []
    mailbox.on_ready(lambda: calls.append(2))
    mailbox.cancel_ready()
    mailbox.close("gone")
    assert calls == [1]
    mailbox.on_ready(lambda: calls.append(3))  # already ready: called at once
    assert calls == [1, 3]


def test_mailbox_overflow_frees_its_events() -> None:
    mailbox = Mailbox(2)
    for seq in (1, 2, 3):
        mailbox.deliver(ev(seq))
    assert mailbox.overflowed and mailbox.take() == []
