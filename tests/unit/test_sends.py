"""The batched send path (chatcore.sends, longtail.batching): same promises, fewer trips.

Runs on SQLite by default and on PostgreSQL with LONGTAIL_TEST_DATABASE_URL set: the
row-lock ordering and ON CONFLICT paths differ between the two.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, event, select, text

from bench.population import add_bystanders
from chatcore import eventlog, send_statement, sends
from chatcore.db import Database, watch_statements
from chatcore.migrate import alembic_config
from chatcore.models import Conversation, Member, Message
from chatcore.service import Chat
from longtail.batching import Batcher
from longtail.errors import ApiError
from tests.backends import REAL_DATABASE_URL


async def user(chat: Chat, name: str) -> int:
    return (await chat.register({"username": name, "password": "password1"}))["id"]


async def befriend(chat: Chat, a: int, b: int, a_name: str, b_name: str) -> None:
    await chat.request_friend(a, {"username": b_name})
    await chat.request_friend(b, {"username": a_name})


async def users(chat: Chat, *names: str) -> list[int]:
    return [await user(chat, n) for n in names]


def commits(db: Database) -> list[int]:
    """A counter of the database's committed transactions from now on.

    On PostgreSQL a batch of sends is one statement, a transaction of its own
    (chatcore.send_statement), given to asyncpg itself, which SQLAlchemy's events do not
    see: there asyncpg's query log counts those statements and the COMMITs (its
    callbacks run soon after each, before the publish that follows has answered).
    """
    counter = [0]
    engine = db.engine.sync_engine
    if engine.dialect.name != "postgresql":

        @event.listens_for(engine, "commit")
        def _commit(_conn: Any) -> None:
            counter[0] += 1

        return counter

    def _logged(query: str) -> None:
        if query == send_statement.SEND_PG or query.strip().upper().startswith("COMMIT"):
            counter[0] += 1

    watch_statements(db.engine, _logged)
    return counter


async def payloads(chat: Chat, user_id: int) -> list[dict[str, Any]]:
    events, head = await chat.events(user_id, 0)
    assert [e.seq for e in events] == list(range(1, head + 1)), "gap-free, in order"
    return [json.loads(e.data) for e in events]


async def test_concurrent_sends_share_one_transaction(chat):
    names = [f"gc{i}_user" for i in range(8)]
    ids = await users(chat, *names)
    for i in range(0, 8, 2):
        await befriend(chat, ids[i], ids[i + 1], names[i], names[i + 1])
    counter = commits(chat.db)
    results = await asyncio.gather(
        *[
            chat.send(ids[i], {"to": ids[i + 1], "body": f"hi {k}", "client_id": f"{i}-{k}"})
            for k in range(5)
            for i in range(0, 8, 2)
        ]
    )
    assert all(created for _, created in results)
    assert len({m["id"] for m, _ in results}) == 20
    assert counter[0] <= 2, "20 concurrent sends are committed together, not one by one"
    for i in range(0, 8, 2):
        received = [
            p["message"]["body"] for p in await payloads(chat, ids[i + 1]) if "message" in p
        ]
        assert received == [f"hi {k}" for k in range(5)], "each pair's order is kept"


async def test_a_batch_giving_users_different_numbers_of_events_keeps_seqs_gap_free(chat):
    # One transaction where b gets three events, a two, c one: each user's seqs still
    # advance by exactly their own count (the reservation takes a count per user).
    a, b, c = await users(chat, "ma_user", "mb_user", "mc_user")
    await befriend(chat, a, b, "ma_user", "mb_user")
    await befriend(chat, c, b, "mc_user", "mb_user")
    heads = {u: (await chat.events(u, 0))[1] for u in (a, b, c)}
    counter = commits(chat.db)
    await asyncio.gather(
        chat.send(a, {"to": b, "body": "a1", "client_id": "a1"}),
        chat.send(a, {"to": b, "body": "a2", "client_id": "a2"}),
        chat.send(c, {"to": b, "body": "c1", "client_id": "c1"}),
    )
    assert counter[0] == 1, "the three sends shared one transaction"
    for u, added in ((a, 2), (b, 3), (c, 1)):
        events = await payloads(chat, u)  # asserts gap-free and in order
        assert len(events) == heads[u] + added
    received = [p["message"]["body"] for p in await payloads(chat, b) if p["type"] == "message"]
    assert received == ["a1", "a2", "c1"]


async def test_one_bad_send_does_not_fail_its_batch(chat):
    a, b, c = await users(chat, "ba_user", "bb_user", "bc_user")
    await befriend(chat, a, b, "ba_user", "bb_user")
    room = await chat.create_room(b, {"name": "not yours", "members": []})
    await chat.send(a, {"to": b, "body": "first", "client_id": "taken"})
    outcomes = await asyncio.gather(
        chat.send(a, {"to": b, "body": "ok", "client_id": "ok"}),
        chat.send(a, {"to": c, "body": "stranger", "client_id": "s"}),
        chat.send(a, {"conversation_id": room["id"], "body": "in", "client_id": "r"}),
        chat.send(a, {"to": b, "body": "different", "client_id": "taken"}),
        chat.send(a, {"to": b, "body": "first", "client_id": "taken"}),
        chat.send(a, {"to": a, "body": "me", "client_id": "self"}),
        return_exceptions=True,
    )
    ok, stranger, not_member, reused, retried, to_self = outcomes
    assert isinstance(ok, tuple) and ok[1] is True
    assert isinstance(stranger, ApiError) and stranger.code == "not_friend"
    assert isinstance(not_member, ApiError) and not_member.code == "conversation_not_found"
    assert isinstance(reused, ApiError) and reused.code == "client_id_reused"
    assert isinstance(retried, tuple) and retried[1] is False
    assert retried[0]["body"] == "first"
    assert isinstance(to_self, ApiError) and to_self.code == "not_friend"
    bodies = [p["message"]["body"] for p in await payloads(chat, b) if p["type"] == "message"]
    assert bodies == ["first", "ok"]


async def test_retries_within_and_across_batches_store_one_message(chat):
    a, b = await users(chat, "ia_user", "ib_user")
    await befriend(chat, a, b, "ia_user", "ib_user")
    body = {"to": b, "body": "once", "client_id": "same"}
    first = await asyncio.gather(*[chat.send(a, dict(body)) for _ in range(6)])
    again, created = await chat.send(a, dict(body))
    assert not created
    assert {m["id"] for m, _ in first} == {again["id"]}
    assert sum(c for _, c in first) == 1
    assert again == next(m for m, c in first if c), "a retry answers with the same message"
    bodies = [p["message"]["body"] for p in await payloads(chat, b) if p["type"] == "message"]
    assert bodies == ["once"]


async def test_every_member_stores_the_event_the_sender_was_answered_byte_for_byte(chat):
    """On PostgreSQL the database writes the event's JSON (chatcore.send_statement): it
    must be the one encoding (eventlog.encode) of the message the sender got back, for
    text JSON must escape and for text it must not."""
    a, b = await users(chat, "ja_user", "jb_user")
    await befriend(chat, a, b, "ja_user", "jb_user")
    room = await chat.create_room(a, {"name": "bytes", "members": [b]})
    text_ = 'é "q" \\ \n\t\x01\x7f 😀 </script> \u2028'
    direct, _ = await chat.send(a, {"to": b, "body": text_, "client_id": 'ü"1'})
    grouped, _ = await chat.send(b, {"conversation_id": room["id"], "body": "x", "client_id": "2"})
    for message, members in ((direct, (a, b)), (grouped, (a, b))):
        for member in members:
            events, _ = await chat.events(member, 0)
            (stored,) = [e for e in events if json.loads(e.data).get("message") == message]
            assert stored.data == eventlog.encode(stored.seq, "message", {"message": message})


async def test_friends_without_a_direct_conversation_get_one_with_their_first_send(chat):
    """Friendships from before accepting created the conversation: the batch stops
    (sends.MissingConversations), the conversations are made in an ORM transaction of
    their own, and the batch runs again."""
    a, b, c = await users(chat, "na_user", "nb_user", "nc_user")
    await befriend(chat, a, b, "na_user", "nb_user")
    await befriend(chat, a, c, "na_user", "nc_user")
    async with chat.db.transaction() as tx:
        old = (
            (await tx.execute(select(Conversation.id).where(Conversation.direct_key.is_not(None))))
            .scalars()
            .all()
        )
        await tx.execute(delete(Member).where(Member.conversation_id.in_(old)))
        await tx.execute(delete(Conversation).where(Conversation.id.in_(old)))
    first, second, third = await asyncio.gather(
        chat.send(a, {"to": b, "body": "to b", "client_id": "1"}),
        chat.send(a, {"to": c, "body": "to c", "client_id": "2"}),
        chat.send(b, {"to": a, "body": "to a", "client_id": "1"}),
    )
    assert first[1] and second[1] and third[1]
    assert (
        first[0]["conversation_id"] == third[0]["conversation_id"] != second[0]["conversation_id"]
    )
    got = [p["message"]["body"] for p in await payloads(chat, a) if p["type"] == "message"]
    assert got == ["to b", "to c", "to a"]
    (listed,) = [x for x in await chat.conversations(c) if x["kind"] == "direct"]
    assert listed["with"]["id"] == a and listed["last_message"]["body"] == "to c"


async def test_room_sends_reach_every_member_and_mark_the_sender_read(chat):
    a, b, c = await users(chat, "ra_user", "rb_user", "rc_user")
    await befriend(chat, a, b, "ra_user", "rb_user")
    await befriend(chat, a, c, "ra_user", "rc_user")
    room = await chat.create_room(a, {"name": "three", "members": [b, c]})
    results = await asyncio.gather(
        chat.send(b, {"conversation_id": room["id"], "body": "from b", "client_id": "1"}),
        chat.send(a, {"conversation_id": room["id"], "body": "from a", "client_id": "1"}),
        chat.send(a, {"to": b, "body": "direct", "client_id": "2"}),
    )
    for uid in (a, b, c):
        got = [p["message"]["body"] for p in await payloads(chat, uid) if p["type"] == "message"]
        expected = ["from b", "from a", "direct"] if uid != c else ["from b", "from a"]
        assert got == expected
    listing = {c["id"]: c for c in await chat.conversations(a)}
    assert listing[room["id"]]["last_message"]["id"] == results[1][0]["id"]
    assert listing[room["id"]]["unread"] == 0, "a's own send read b's, sent before it"
    listing = {c["id"]: c for c in await chat.conversations(b)}
    assert listing[room["id"]]["unread"] == 1, "a's came after b's: unread for b"
    assert {c["id"]: c for c in await chat.conversations(c)}[room["id"]]["unread"] == 2


async def test_reading_and_sending_both_count_as_read_and_markers_never_go_back(chat):
    """The read marker is the user's own, or their newest message past it."""
    a, b = await users(chat, "ma_user", "mb_user")
    await befriend(chat, a, b, "ma_user", "mb_user")
    first, _ = await chat.send(b, {"to": a, "body": "one", "client_id": "1"})
    second, _ = await chat.send(b, {"to": a, "body": "two", "client_id": "2"})
    conversation_id = first["conversation_id"]

    async def unread(user_id: int) -> int:
        listing = {c["id"]: c for c in await chat.conversations(user_id)}
        return listing[conversation_id]["unread"]

    assert await unread(a) == 2

    async def receipts() -> int:
        return sum(p["type"] == "read" for p in await payloads(chat, b))

    answer = await chat.mark_read(a, conversation_id, {"message_id": first["id"]})
    assert answer["last_read"] == first["id"] and await receipts() == 1
    assert await unread(a) == 1
    mine, _ = await chat.send(a, {"to": b, "body": "reply", "client_id": "3"})
    assert await unread(a) == 0, "a's reply came after b's two: both read"
    # Marking an earlier message read is a no-op that answers the marker in force.
    answer = await chat.mark_read(a, conversation_id, {"message_id": second["id"]})
    assert answer["last_read"] == mine["id"] and await receipts() == 1
    third, _ = await chat.send(b, {"to": a, "body": "three", "client_id": "4"})
    assert await unread(a) == 1
    listing = {c["id"]: c for c in await chat.conversations(b)}
    assert listing[conversation_id]["last_message"]["id"] == third["id"]
    assert listing[conversation_id]["unread"] == 0, "b read a's reply by sending after it"


async def test_two_chatcores_sending_to_one_user_keep_seqs_gap_free_and_ordered(
    chat, settings, redis_factory
):
    """Two processes' batches lock the same user rows: ordered locks, no deadlock, no gap.

    Everyone both sends and receives, from both processes at once: a message's foreign
    keys share-lock its sender's row while the other process locks that row for its seq,
    the mix that deadlocks if the seq lock is FOR UPDATE rather than FOR NO KEY UPDATE.
    """
    other = Chat(settings, Database(settings.database_url), redis_factory())
    try:
        names = [f"t{i}_user" for i in range(6)]
        ids = await users(chat, *names)
        for i in range(6):
            for j in range(i + 1, 6):
                await befriend(chat, ids[i], ids[j], names[i], names[j])

        async def sender(n: int, core: Chat) -> None:
            for k in range(6):
                for m in range(6):
                    if m != n:
                        body = {"to": ids[m], "body": f"{n}:{k}", "client_id": f"{m}-{k}"}
                        await core.send(ids[n], body)

        await asyncio.gather(*[sender(n, chat if n % 2 else other) for n in range(6)])
        for m in range(6):
            got = [p["message"]["body"] for p in await payloads(chat, ids[m]) if "message" in p]
            assert len(got) == 2 * 5 * 6, "30 received and 30 sent"
            for n in range(6):
                assert [b for b in got if b.startswith(f"{n}:")] == [
                    f"{n}:{k}" for k in range(6) for _ in range(5 if n == m else 1)
                ], "each sender's messages in the order sent"
    finally:
        await other.db.close()


async def test_a_batch_that_fails_as_a_whole_is_retried_send_by_send(chat, monkeypatch, caplog):
    a, b = await users(chat, "fa_user", "fb_user")
    await befriend(chat, a, b, "fa_user", "fb_user")
    store = sends.store

    async def fragile(tx: Any, requests: list[sends.SendRequest], *rest: Any) -> Any:
        if len(requests) > 1:
            raise RuntimeError("one bad row spoils the statement")
        return await store(tx, requests, *rest)

    monkeypatch.setattr(sends, "store", fragile)
    with caplog.at_level(logging.WARNING, "longtail.chatcore"):
        results = await asyncio.gather(
            *[chat.send(a, {"to": b, "body": str(k), "client_id": str(k)}) for k in range(4)]
        )
    assert all(created for _, created in results)
    assert "storing them one by one" in caplog.text
    bodies = [p["message"]["body"] for p in await payloads(chat, b) if p["type"] == "message"]
    assert sorted(bodies) == ["0", "1", "2", "3"]


async def test_validation_fails_before_the_batch(chat):
    a = await user(chat, "va_user")
    for body, code in [
        ({"to": 1, "body": "x", "client_id": ""}, "invalid_field"),
        ({"to": 1, "body": "  ", "client_id": "c"}, "empty_message"),
        ({"to": 1, "body": "x" * 5000, "client_id": "c"}, "message_too_long"),
    ]:
        with pytest.raises(ApiError) as info:
            await chat.send(a, body)
        assert info.value.code == code
    assert not chat._sends.busy


async def test_group_commit_gives_each_caller_its_own_outcome():
    seen: list[list[int]] = []

    async def run(batch: list[int]) -> list[int | BaseException]:
        seen.append(batch)
        await asyncio.sleep(0.01)
        return [ValueError(n) if n == 3 else n * 10 for n in batch]

    group: Batcher[int, int] = Batcher(run, max_batch=3)
    waiters = [asyncio.create_task(group.submit(n)) for n in range(6)]
    await asyncio.sleep(0)
    waiters[4].cancel()  # a caller gone away: the others still get their answers
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert results[:4] == [0, 10, 20, results[3]] and isinstance(results[3], ValueError)
    assert isinstance(results[4], asyncio.CancelledError) and results[5] == 50
    assert seen == [[0, 1, 2], [3, 4, 5]], "what queued while a batch ran goes next, together"
    assert not group.busy


async def test_group_commit_serves_a_caller_that_comes_right_after_a_batch():
    """The drain task leaves the group in the same step that finds the queue empty."""

    async def run(batch: list[int]) -> list[int | BaseException]:
        return list(batch)

    group: Batcher[int, int] = Batcher(run)
    for n in range(3):
        assert await asyncio.wait_for(group.submit(n), 5) == n


async def test_group_commit_failure_reaches_every_caller_in_the_batch():
    async def run(batch: list[int]) -> list[int | BaseException]:
        raise OSError("database gone")

    group: Batcher[int, int] = Batcher(run)
    results = await asyncio.gather(*[group.submit(n) for n in range(3)], return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)


async def terminate(chat: Chat, where: str) -> None:
    """End the PostgreSQL backends that `where` picks out of pg_stat_activity, from a
    connection of their own, as a database restart or an admin would."""
    killer = Database(chat.db.url)
    try:
        async with killer.engine.connect() as conn:
            await conn.execute(
                text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}")
            )
    finally:
        await killer.close()


@pytest.mark.skipif(not REAL_DATABASE_URL, reason="PostgreSQL only: SQLite has no server")
async def test_a_pooled_connection_killed_while_idle_is_replaced(chat, monkeypatch):
    """What pool_pre_ping was for, now paid only after idleness (chatcore.db)."""
    monkeypatch.setattr("chatcore.db.PING_IDLE_AFTER", 0.0)
    a, b = await users(chat, "ka_user", "kb_user")
    await befriend(chat, a, b, "ka_user", "kb_user")
    await terminate(
        chat, "datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'"
    )
    message, created = await chat.send(a, {"to": b, "body": "still here", "client_id": "k"})
    assert created and message["body"] == "still here"
    async with chat.db.transaction() as tx:
        assert await tx.scalar(select(Message.body).where(Message.id == message["id"]))


def server_of_each_batch(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The PostgreSQL backend (its pid) that runs each batch of sends from now on."""
    servers: list[int] = []
    store = sends.store

    async def noting(tx: Any, *args: Any) -> Any:
        servers.append(tx.driver.get_server_pid())
        return await store(tx, *args)

    monkeypatch.setattr(sends, "store", noting)
    return servers


@pytest.mark.skipif(not REAL_DATABASE_URL, reason="PostgreSQL only: SQLite has no server")
async def test_batch_after_batch_of_sends_uses_one_connection_without_the_pool(chat, monkeypatch):
    """The send path keeps its connection between batches (chatcore.db.sql_transaction):
    a pool checkout and check-in cost more CPU than the statement's round trip."""
    a, b = await users(chat, "ca_user", "cb_user")
    await befriend(chat, a, b, "ca_user", "cb_user")
    checkouts = [0]

    @event.listens_for(chat.db.engine.sync_engine, "checkout")
    def _checkout(*_args: Any) -> None:
        checkouts[0] += 1

    servers = server_of_each_batch(monkeypatch)
    for n in range(5):
        await chat.send(a, {"to": b, "body": f"kept {n}", "client_id": f"k{n}"})
    assert len(set(servers)) == 1, "every batch ran on the same connection"
    assert checkouts[0] <= 1, "none but perhaps the first took one from the pool"
    received = [p["message"]["body"] for p in await payloads(chat, b) if p["type"] == "message"]
    assert received == [f"kept {n}" for n in range(5)]


@pytest.mark.skipif(not REAL_DATABASE_URL, reason="PostgreSQL only: SQLite has no server")
async def test_the_kept_connection_killed_while_idle_is_replaced(chat, monkeypatch):
    """The kept connection is pinged after idleness, as the pool's are: a send after a
    database restart is stored, not refused."""
    monkeypatch.setattr("chatcore.db.PING_IDLE_AFTER", 0.0)
    a, b = await users(chat, "ia_user", "ib_user")
    await befriend(chat, a, b, "ia_user", "ib_user")
    servers = server_of_each_batch(monkeypatch)
    await chat.send(a, {"to": b, "body": "before", "client_id": "i1"})
    await terminate(chat, f"pid = {servers[0]}")
    message, created = await chat.send(a, {"to": b, "body": "after", "client_id": "i2"})
    assert created and message["body"] == "after"
    assert servers[1] != servers[0], "the killed connection was not used again"
    received = [p["message"]["body"] for p in await payloads(chat, b) if p["type"] == "message"]
    assert received == ["before", "after"]


@pytest.mark.skipif(not REAL_DATABASE_URL, reason="PostgreSQL only: SQLite has no server")
async def test_transactions_at_once_each_get_a_connection_and_one_is_kept(chat):
    db = chat.db
    entered = asyncio.Event()
    release = asyncio.Event()
    servers: list[int] = []

    async def hold() -> None:
        async with db.sql_transaction() as tx:
            assert tx.driver is not None
            servers.append(tx.driver.get_server_pid())
            if len(servers) == 2:
                entered.set()
            await release.wait()
            assert await tx.driver.fetchval("SELECT 1") == 1

    both = asyncio.gather(hold(), hold())
    await asyncio.wait_for(entered.wait(), 5)
    assert servers[0] != servers[1], "a transaction under way keeps its connection to itself"
    release.set()
    await both
    assert db.engine.pool.checkedout() == 1, "one is kept for the next batch, one went back"
    await db.close()
    assert db.engine.pool.checkedout() == 0, "closing the database returns the kept one"


@pytest.mark.skipif(not REAL_DATABASE_URL, reason="PostgreSQL only: SQLite plans no statement")
async def test_the_send_statement_is_planned_once_not_for_every_send(chat, monkeypatch):
    """A batch of one send, the usual one at light load, is not planned again for each
    call (chatcore.db.SERVER_SETTINGS). PostgreSQL's default re-planned it every time once
    the database held about 2,000 friendships, and that planning cost more than the send.
    Here the tables are small, where the default makes five plans of its own first."""
    a, b = await users(chat, "pa_user", "pb_user")
    await befriend(chat, a, b, "pa_user", "pb_user")
    store = sends.store
    plans: list[tuple[int, int]] = []

    async def counting(tx: Any, *args: Any) -> Any:
        stored = await store(tx, *args)
        rows = await tx.rows(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
            send_statement.SEND_PG,
        )
        plans.extend((generic, custom) for generic, custom in rows)
        return stored

    monkeypatch.setattr(sends, "store", counting)
    for n in range(8):
        await chat.send(a, {"to": b, "body": f"plan {n}", "client_id": f"p{n}"})
    assert len(plans) == 8
    assert [custom for _, custom in plans] == [0] * 8
    received = [p["message"]["body"] for p in await payloads(chat, b) if p["type"] == "message"]
    assert received == [f"plan {n}" for n in range(8)]


@pytest.mark.skipif(not REAL_DATABASE_URL, reason="PostgreSQL only: SQLite plans no statement")
async def test_the_send_statement_reads_rows_by_key_among_thousands_of_users(chat):
    """In a database of a few thousand users the send statement's one plan looks up the
    rows a send needs, rather than read the users and friendships whole each time
    (chatcore.db.SERVER_SETTINGS: random_page_cost)."""
    await add_bystanders(chat.db.url, 3000)
    a, b = await users(chat, "ra_user", "rb_user")
    await befriend(chat, a, b, "ra_user", "rb_user")
    async with chat.db.sql_transaction(implicit=True) as tx:
        driver = tx.driver
        assert driver is not None
        await driver.execute("PREPARE probe AS " + send_statement.SEND_PG)
        try:
            # Not run: EXPLAIN shows the generic plan, the one chatcore's connections keep.
            plan = await driver.fetchval(
                "EXPLAIN (FORMAT JSON) EXECUTE probe("
                f"ARRAY[{a}], ARRAY[{b}], ARRAY[NULL]::bigint[], ARRAY['probe'], ARRAY['hi'],"
                """ ARRAY['"body":"hi"}'], now(), 'accepted', '{}', '{}')"""
            )
        finally:
            await driver.execute("DEALLOCATE probe")

    def scans(node: dict[str, Any]) -> list[str]:
        found = [node["Relation Name"]] if node["Node Type"] == "Seq Scan" else []
        return found + [t for child in node.get("Plans", ()) for t in scans(child)]

    # SQLAlchemy gives its asyncpg connections a json codec: the plan comes parsed.
    whole = set(scans(plan[0]["Plan"]))
    assert not whole & {"users", "friendships", "conversations", "conversation_members"}


@pytest.mark.skipif(not REAL_DATABASE_URL, reason="PostgreSQL only: SQLite has no server")
async def test_a_send_whose_connection_dies_mid_transaction_is_a_503_then_stored_on_retry(
    chat, monkeypatch
):
    """The send path's transaction is asyncpg's own (chatcore.db.Tx): a lost connection
    must still be the 503 clients retry on, and the pool must not hand it out again."""
    a, b = await users(chat, "da_user", "db_user")
    await befriend(chat, a, b, "da_user", "db_user")
    store = sends.store

    async def cut_off(tx: Any, requests: list[sends.SendRequest], *rest: Any) -> Any:
        await terminate(chat, f"pid = {int(tx.driver.get_server_pid())}")
        return await store(tx, requests, *rest)

    monkeypatch.setattr(sends, "store", cut_off)
    body = {"to": b, "body": "after the cut", "client_id": "cut"}
    with pytest.raises(ApiError) as failed:
        await chat.send(a, dict(body))
    assert failed.value.status == 503 and failed.value.code == "database_unavailable"
    monkeypatch.setattr(sends, "store", store)
    for _ in range(3):  # every pooled connection is alive: none is the killed one
        message, created = await chat.send(a, dict(body))
        body["client_id"] += "+"
        assert created and message["body"] == "after the cut"
    received = [p["message"]["body"] for p in await payloads(chat, b) if p["type"] == "message"]
    assert received == ["after the cut"] * 3


async def test_migration_0003_downgrade_restores_the_markers_sends_used_to_move(chat):
    """Down to 0002 the old code must find its markers as it would have left them."""
    a, b = await users(chat, "da_user", "db_user")
    await befriend(chat, a, b, "da_user", "db_user")
    first, _ = await chat.send(a, {"to": b, "body": "one", "client_id": "1"})
    second, _ = await chat.send(b, {"to": a, "body": "two", "client_id": "2"})
    await chat.mark_read(b, first["conversation_id"], {"message_id": first["id"]})
    conversation_id = first["conversation_id"]
    marker_sql = text(
        "SELECT user_id, last_read_message_id FROM conversation_members"
        " WHERE conversation_id = :cid ORDER BY user_id"
    )
    async with chat.db.engine.connect() as conn:
        await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0002"))
        await conn.commit()
        try:
            newest = await conn.scalar(
                text("SELECT last_message_id FROM conversations WHERE id = :cid"),
                {"cid": conversation_id},
            )
            markers = dict((await conn.execute(marker_sql, {"cid": conversation_id})).all())
        finally:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
            await conn.commit()
    assert newest == second["id"]
    assert markers == {a: first["id"], b: second["id"]}, "own sends counted as read"
