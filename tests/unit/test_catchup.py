"""Catch-up reads the hot buffer when it can answer, chatcore when only it can."""

from __future__ import annotations

import pytest

from gateway.catchup import Catchup
from gateway.feed import Feed
from gateway.mailbox import Mailbox
from longtail.wire import Event, Keys


class Chatcore:
    """Stands in for chatcore's event log: events 1..head."""

    def __init__(self, head: int) -> None:
        self.head_seq = head
        self.reads = 0

    async def events_after(self, user_id: int, after: int) -> tuple[list[Event], int]:
        self.reads += 1
        return [Event(s, b"{}") for s in range(after + 1, self.head_seq + 1)], self.head_seq

    async def head(self, user_id: int) -> int:
        self.reads += 1
        return self.head_seq


@pytest.fixture
def keys(redis_prefix):
    return Keys(redis_prefix)


async def buffer(redis, keys, seqs, head=None):
    if seqs:
        await redis.zadd(keys.buffer(1), {b'{"seq":%d}' % s: s for s in seqs})
    if head is not None:
        await redis.set(keys.head(1), head)


@pytest.mark.parametrize(
    ("buffered", "head", "cursor", "expect", "chatcore_reads"),
    [
        ([5, 6, 7], 7, 4, [5, 6, 7], 0),  # the buffer covers the cursor: served from Redis
        ([5, 6, 7], 7, 6, [7], 0),
        ([5, 6, 7], 7, 7, [], 0),  # up to date
        ([5, 6, 7], 7, 2, [3, 4, 5, 6, 7], 1),  # older than the buffer: chatcore
        ([], None, 0, [1, 2, 3, 4, 5, 6, 7], 1),  # Redis lost everything: chatcore
        ([], 7, 7, [], 0),  # buffer expired, head kept: still up to date
        ([], 7, 5, [6, 7], 1),  # buffer expired, behind the head: chatcore
        ([5, 7], 7, 4, [5, 6, 7], 1),  # a hole (6's publish is late): chatcore
    ],
)
async def test_catchup_source(redis_factory, keys, buffered, head, cursor, expect, chatcore_reads):
    redis = redis_factory()
    await buffer(redis, keys, buffered, head)
    chatcore = Chatcore(head=7)
    catchup = Catchup(redis, keys, chatcore)  # type: ignore[arg-type]
    assert [e.seq for e in await catchup.after(1, cursor)] == expect
    assert chatcore.reads == chatcore_reads


async def test_a_stream_caught_up_past_a_hole_in_the_buffer_misses_nothing(redis_factory, keys):
    """A primary died with 6's publish: the outbox publishes it again later, but 7 went out
    on the promoted primary before this gateway subscribed there. The catch-up made at
    the re-subscription is the stream's only way to 7: pub/sub brings 6 again, not 7."""
    redis = redis_factory()
    await buffer(redis, keys, [5, 7], head=7)
    stream = Feed(1, 4, Mailbox(10), Catchup(redis, keys, Chatcore(head=7)))  # type: ignore[arg-type]
    assert [e.seq for e in await stream.next(1)] == [5, 6, 7]
    stream.mailbox.deliver(Event(6, b"{}"))  # the outbox's retry
    assert await stream.next(0) == [] and stream.cursor == 7


async def test_head_comes_from_redis_or_chatcore(redis_factory, keys):
    redis = redis_factory()
    chatcore = Chatcore(head=9)
    catchup = Catchup(redis, keys, chatcore)  # type: ignore[arg-type]
    assert await catchup.head(1) == 9 and chatcore.reads == 1
    await redis.set(keys.head(1), 9)
    assert await catchup.head(1) == 9 and chatcore.reads == 1


async def test_an_idle_users_head_is_cached_after_one_chatcore_read(redis_factory, keys):
    redis = redis_factory()
    chatcore = Chatcore(head=0)  # a user with no events: chatcore writes no head for them
    catchup = Catchup(redis, keys, chatcore)  # type: ignore[arg-type]
    for _ in range(3):
        assert await catchup.after(1, 0) == []
    assert chatcore.reads == 1, "later polls are answered from Redis"
