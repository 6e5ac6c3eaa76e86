"""Chatcore keeps the outbox vacuumed while it sends (chatcore.vacuum). PostgreSQL only."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import pytest

from chatcore.db import Database
from chatcore.service import Chat
from chatcore.vacuum import OutboxVacuum
from tests.backends import REAL_DATABASE_URL
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(
    not REAL_DATABASE_URL, reason="PostgreSQL only: SQLite reuses deleted rows' pages itself"
)

NOT_OWNER = "longtail_test_not_owner"


async def vacuums(chat: Chat) -> int:
    """VACUUMs of the outbox run by a client (autovacuum's are counted apart)."""
    async with chat.db.sql_transaction(implicit=True) as tx:
        assert tx.driver is not None
        return await tx.driver.fetchval(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'"
        )


async def outbox_rows(chat: Chat) -> int:
    async with chat.db.sql_transaction(implicit=True) as tx:
        assert tx.driver is not None
        return await tx.driver.fetchval("SELECT count(*) FROM outbox")


async def friends(chat: Chat) -> tuple[int, int]:
    a = (await chat.register({"username": "va_user", "password": "password1"}))["id"]
    b = (await chat.register({"username": "vb_user", "password": "password1"}))["id"]
    await chat.request_friend(a, {"username": "vb_user"})
    await chat.request_friend(b, {"username": "va_user"})
    return a, b


async def test_a_busy_outbox_is_vacuumed_as_sends_go_on(chat):
    """Not only at autovacuum's next visit, up to a minute later."""
    chat.publisher.vacuum = OutboxVacuum(chat.db, interval=0.05, after_rows=20)
    a, b = await friends(chat)
    before = await vacuums(chat)
    await chat.publisher.start()
    try:
        for n in range(12):  # two events each, the sender's and the friend's
            await chat.send(a, {"to": b, "body": f"vacuum {n}", "client_id": f"v{n}"})
        await eventually(lambda: _more(chat, before), deadline=10, what="a new VACUUM")
        await eventually(lambda: _empty(chat), deadline=10, what="the published rows deleted")
    finally:
        await chat.publisher.stop()
    events, _head = await chat.events(b, 0)
    bodies = [e.data for e in events if b'"type":"message"' in e.data]
    assert len(bodies) == 12, "every message is stored while the outbox is vacuumed"


async def _more(chat: Chat, before: int) -> bool:
    return await vacuums(chat) > before


async def _empty(chat: Chat) -> bool:
    return await outbox_rows(chat) == 0


async def test_a_quiet_outbox_is_not_vacuumed(chat):
    vacuum = OutboxVacuum(chat.db, after_rows=1000)
    chat.publisher.vacuum = vacuum
    a, b = await friends(chat)
    await chat.send(a, {"to": b, "body": "only one", "client_id": "q1"})
    before = await vacuums(chat)
    assert not await vacuum.vacuum_if_due()
    assert await vacuums(chat) == before
    vacuum.note_written(1000)
    assert await vacuum.vacuum_if_due()
    assert await vacuums(chat) == before + 1
    assert not await vacuum.vacuum_if_due(), "the count starts again after a VACUUM"


async def test_a_role_that_does_not_own_the_outbox_leaves_it_to_autovacuum(chat, caplog):
    assert await OutboxVacuum(chat.db).may_vacuum(), "the role that migrated owns the outbox"
    async with chat.db.sql_transaction(implicit=True) as tx:
        assert tx.driver is not None
        if not await tx.driver.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", NOT_OWNER):
            await tx.driver.execute(f"CREATE ROLE {NOT_OWNER} LOGIN")
        schema = await tx.driver.fetchval("SELECT current_schema()")
        await tx.driver.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {NOT_OWNER}')
    parts = urlsplit(chat.db.url)
    host = parts.netloc.rsplit("@", 1)[-1]
    stranger = Database(urlunsplit(parts._replace(netloc=f"{NOT_OWNER}@{host}")))
    try:
        vacuum = OutboxVacuum(stranger, interval=0.01, after_rows=1)
        assert not await vacuum.may_vacuum()
        with caplog.at_level(logging.WARNING, logger="longtail.chatcore.vacuum"):
            await vacuum.run()  # returns at once instead of vacuuming in vain
        assert "does not own the outbox" in caplog.text
    finally:
        await stranger.close()
        async with chat.db.sql_transaction(implicit=True) as tx:
            assert tx.driver is not None
            await tx.driver.execute(f'REVOKE USAGE ON SCHEMA "{schema}" FROM {NOT_OWNER}')
            await tx.driver.execute(f"DROP ROLE {NOT_OWNER}")
