"""chatcore's promises: gap-free per-user seqs, idempotent sends, crash-safe publishing."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import func, select

from chatcore.app import redis_options
from chatcore.db import Database
from chatcore.eventlog import Delivery
from chatcore.models import Outbox
from chatcore.outbox import DELIVERIES_PER_CALL, Publisher
from chatcore.service import Chat
from longtail.errors import ApiError
from longtail.wire import Event, Keys


async def user(chat: Chat, name: str) -> int:
    return (await chat.register({"username": name, "password": "password1"}))["id"]


async def friends(chat: Chat, a: int, b: int, a_name: str, b_name: str) -> None:
    await chat.request_friend(a, {"username": b_name})
    await chat.request_friend(b, {"username": a_name})


async def outbox_rows(chat: Chat) -> int:
    async with chat.db.transaction() as tx:
        return (await tx.execute(select(func.count()).select_from(Outbox))).scalar_one()


async def test_concurrent_sends_give_each_user_gap_free_seqs(chat):
    names = ["ua_user", "ub_user", "uc_user"]
    ids = [await user(chat, n) for n in names]
    for i in range(3):
        for j in range(i + 1, 3):
            await friends(chat, ids[i], ids[j], names[i], names[j])
    # Everyone writes to everyone at once: the worst case for lock ordering.
    sends = [
        chat.send(ids[i], {"to": ids[j], "body": f"{i}->{j} #{k}", "client_id": f"{i}-{j}-{k}"})
        for k in range(15)
        for i in range(3)
        for j in range(3)
        if i != j
    ]
    await asyncio.gather(*sends)
    for uid in ids:
        events, head = await chat.events(uid, 0)
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, head + 1)), "seqs are 1..head with no gap or repeat"
        # 4 friendship events + 30 received + 30 sent.
        assert head == 4 + 60


async def test_concurrent_retries_of_one_send_store_one_message(chat):
    a, b = await user(chat, "ra_user"), await user(chat, "rb_user")
    await friends(chat, a, b, "ra_user", "rb_user")
    results = await asyncio.gather(
        *[chat.send(a, {"to": b, "body": "once", "client_id": "same"}) for _ in range(8)]
    )
    assert len({m["id"] for m, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    events, _ = await chat.events(b, 2)
    assert [json.loads(e.data)["message"]["body"] for e in events] == ["once"]


async def test_published_events_leave_the_outbox(chat):
    a, b = await user(chat, "pa_user"), await user(chat, "pb_user")
    await friends(chat, a, b, "pa_user", "pb_user")
    await chat.publisher._forget()
    assert await outbox_rows(chat) == 0


async def test_the_next_send_deletes_what_the_last_one_published(chat):
    """Published outbox rows go with the next send's transaction, not one of their own;
    a send that fails leaves them for the next try."""
    a, b = await user(chat, "na_user"), await user(chat, "nb_user")
    await friends(chat, a, b, "na_user", "nb_user")
    await chat.publisher._forget()
    await chat.send(a, {"to": b, "body": "one", "client_id": "n1"})
    assert await outbox_rows(chat) == 2, "the sender's and the receiver's event"
    with pytest.raises(ApiError):
        await chat.send(a, {"to": 999_999, "body": "nobody", "client_id": "n2"})
    await chat.send(a, {"to": b, "body": "two", "client_id": "n3"})
    # Only the second message's rows are left: the first one's went with it.
    assert await outbox_rows(chat) == 2
    await chat.publisher._forget()
    assert await outbox_rows(chat) == 0


async def test_gateway_batches_answer_each_send_on_its_own(chat):
    """chatcore.service.Chat.send_many: a refusal or a bad body is that send's answer."""
    a, b = await user(chat, "ga_user"), await user(chat, "gb_user")
    await friends(chat, a, b, "ga_user", "gb_user")
    outcomes = await chat.send_many(
        [
            (a, {"to": b, "body": "hi", "client_id": "g1"}),
            (a, {"to": 424242, "body": "stranger", "client_id": "g2"}),
            (b, "not an object"),
            (a, {"to": b, "body": "hi", "client_id": "g1"}),
            (b, {"to": a, "body": "x" * 100_000, "client_id": "g3"}),
        ]
    )
    assert outcomes[0][1] is True and outcomes[3] == (outcomes[0][0], False)
    assert [o.status if isinstance(o, ApiError) else None for o in outcomes] == [
        None,
        403,
        400,
        None,
        413,
    ]


async def test_events_committed_while_redis_is_down_are_published_by_the_sweep(
    settings, redis_factory
):
    """The crash-between-commit-and-publish case: the outbox rows outlive the failure."""
    db = Database(settings.database_url)
    dead_redis = Redis(host="127.0.0.1", port=1, **redis_options())
    broken = Chat(settings, db, dead_redis)
    a, b = await user(broken, "oa_user"), await user(broken, "ob_user")
    await friends(broken, a, b, "oa_user", "ob_user")
    _message, created = await broken.send(a, {"to": b, "body": "survives", "client_id": "x"})
    assert created, "the send itself succeeds: it is committed"
    assert await outbox_rows(broken) == 6
    await dead_redis.aclose()

    # A new chatcore process starts: its publisher sweeps everything left behind.
    live_redis = redis_factory()
    keys = Keys(settings.redis_prefix)
    pubsub = live_redis.pubsub()
    await pubsub.ssubscribe(keys.channel(b))
    await pubsub.get_message(timeout=1)
    restarted = Chat(settings, db, live_redis)
    await restarted.publisher.start()
    try:
        received = []
        while len(received) < 3:
            msg = await pubsub.get_message(timeout=5)
            assert msg is not None, "re-published events arrive on the channel"
            if msg["type"] == "smessage":
                received.append(json.loads(Event.from_message(msg["data"]).data))
        assert [e["seq"] for e in received] == [1, 2, 3]
        assert received[-1]["message"]["body"] == "survives"
        assert int(await live_redis.get(keys.head(b))) == 3
        assert await live_redis.zcard(keys.buffer(b)) == 3
        await restarted.publisher._forget()
        assert await outbox_rows(restarted) == 0
    finally:
        await pubsub.aclose()
        await restarted.publisher.stop()
        await db.close()


async def test_a_late_republish_leaves_the_head_at_the_newest_seq(chat, settings):
    """The sweep re-publishes 4 after 5 went out (4's publish failed in a failover): the
    head stays 5, or every poll at 5 would read chatcore until the user's next event."""
    keys = Keys(settings.redis_prefix)
    publisher = Publisher(chat.db, chat.redis, keys, buffer_size=50, buffer_ttl=60)
    assert await publisher.publish([Delivery(904, Event(5, b'{"seq":5}'))])
    assert await publisher.publish([Delivery(904, Event(4, b'{"seq":4}'))])
    assert int(await chat.redis.get(keys.head(904))) == 5
    assert await chat.redis.ttl(keys.head(904)) > 0
    assert await chat.redis.zrange(keys.buffer(904), 0, -1) == [b'{"seq":4}', b'{"seq":5}']


async def test_a_batch_larger_than_one_script_call_is_buffered_and_published_in_order(
    chat, settings
):
    """Three users' events, more than one DELIVER call takes on one Redis server (a
    Cluster's calls take one each): each buffer keeps its newest, each head is its
    last seq, and a channel hears every event of its user, in order."""
    keys = Keys(settings.redis_prefix)
    publisher = Publisher(chat.db, chat.redis, keys, buffer_size=50, buffer_ttl=60)
    users, count = [901, 902, 903], DELIVERIES_PER_CALL
    deliveries = [
        Delivery(u, Event(seq, b'{"seq":%d,"user":%d}' % (seq, u)))
        for u in users
        for seq in range(1, count + 1)
    ]
    pubsub = chat.redis.pubsub()
    await pubsub.ssubscribe(keys.channel(902))
    assert (await pubsub.get_message(timeout=5))["type"] == "ssubscribe"
    try:
        assert await publisher.publish(deliveries)
        for u in users:
            assert int(await chat.redis.get(keys.head(u))) == count
            newest = range(count - 49, count + 1)
            assert await chat.redis.zrange(keys.buffer(u), 0, -1) == [
                b'{"seq":%d,"user":%d}' % (seq, u) for seq in newest
            ]
        heard = []
        while len(heard) < count:
            message = await pubsub.get_message(timeout=5)
            assert message is not None, "every event of the user is published"
            if message["type"] == "smessage":
                heard.append(Event.from_message(message["data"]))
        assert [(e.seq, e.data) for e in heard] == [
            (seq, b'{"seq":%d,"user":902}' % seq) for seq in range(1, count + 1)
        ]
    finally:
        await pubsub.aclose()


async def test_sweep_leaves_fresh_rows_to_the_live_publisher(chat):
    a, b = await user(chat, "fa_user"), await user(chat, "fb_user")
    chat.publisher._published.clear()
    await friends(chat, a, b, "fa_user", "fb_user")
    chat.publisher._published.clear()  # pretend the deletes are still pending
    assert await chat.publisher.sweep(older_than=timedelta(seconds=60)) == 0
    assert await chat.publisher.sweep(older_than=timedelta(0)) == 4


async def test_cursor_ahead_is_refused(chat):
    a = await user(chat, "ca_user")
    with pytest.raises(ApiError) as info:
        await chat.events(a, 1)
    assert info.value.status == 400 and info.value.code == "cursor_ahead"


async def test_unfriending_stops_messages_and_refriending_reuses_the_conversation(chat):
    a, b = await user(chat, "la_user"), await user(chat, "lb_user")
    await friends(chat, a, b, "la_user", "lb_user")
    first, _ = await chat.send(a, {"to": b, "body": "1", "client_id": "1"})
    await chat.remove_friend(b, a)
    with pytest.raises(ApiError) as info:
        await chat.send(a, {"to": b, "body": "2", "client_id": "2"})
    assert info.value.status == 403
    await friends(chat, a, b, "la_user", "lb_user")
    again, _ = await chat.send(a, {"to": b, "body": "3", "client_id": "3"})
    assert again["conversation_id"] == first["conversation_id"]
    history = await chat.history(b, first["conversation_id"], None, None)
    assert [m["body"] for m in history["messages"]] == ["1", "3"]


async def test_a_logout_that_cannot_be_announced_fails_whole_and_can_be_retried(chat, monkeypatch):
    """Gateways may keep a session in their process while they hear the user's channel:
    a logout they are not told of must not count as done."""
    await user(chat, "lo_user")
    token = (await chat.login({"username": "lo_user", "password": "password1"}))["token"]

    async def unreachable(*_args: object) -> int:
        raise RedisConnectionError("redis went away")

    redis = chat.sessions._redis
    monkeypatch.setattr(redis, "spublish", unreachable)
    with pytest.raises(RedisConnectionError):
        await chat.logout(token)
    assert (await chat.verify(token))["id"], "the session is still valid: nothing half-done"

    monkeypatch.undo()
    await chat.logout(token)
    with pytest.raises(ApiError) as refused:
        await chat.verify(token)
    assert refused.value.status == 401
