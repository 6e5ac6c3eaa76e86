"""What chatcore does, one method per command: a transaction, then the publish.

Every write runs in one transaction that also appends the events it causes; the events
are published only after commit (see chatcore.outbox for the crash-safety half).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore import accounts, eventlog, friends, messaging, rooms, sends
from chatcore.db import Database, Tx
from chatcore.eventlog import Delivery
from chatcore.outbox import Publisher
from chatcore.passwords import Passwords
from chatcore.sessions import Sessions
from longtail.batching import Batcher
from longtail.errors import ApiError, bad_request
from longtail.settings import Settings
from longtail.validate import field_int
from longtail.wire import Event, Keys

log = logging.getLogger("longtail.chatcore")

T = TypeVar("T")
H = TypeVar("H", AsyncSession, Tx)  # what a transaction hands its work


def ephemeral(type_: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"type": type_, **body}, separators=(",", ":"), ensure_ascii=False).encode()


EVENTS_PAGE = 500


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """The database is unreachable or went away mid-transaction: a clear 503 the client
    retries (sends are idempotent on client_id), never a 500."""
    try:
        yield
    except (OperationalError, InterfaceError, OSError) as exc:
        log.warning("database unavailable: %s", type(exc).__name__)
        raise ApiError(
            503,
            "database_unavailable",
            "The chat service cannot reach its database; try again shortly.",
            headers={"Retry-After": "1"},
        ) from None
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("database connection lost: %s", type(exc.orig).__name__)
        raise ApiError(
            503,
            "database_unavailable",
            "The chat service lost its database connection; try again shortly.",
            headers={"Retry-After": "1"},
        ) from None


class Chat:
    def __init__(self, settings: Settings, db: Database, redis: Redis) -> None:
        keys = Keys(settings.redis_prefix)
        self.settings = settings
        self.db = db
        self.redis = redis
        self.passwords = Passwords(settings.argon2_time_cost, settings.argon2_memory_kib)
        self.sessions = Sessions(redis, keys, settings.session_ttl)
        self.publisher = Publisher(db, redis, keys, settings.buffer_size, settings.buffer_ttl)
        self._commits = 0
        self._busy = 0  # database work under way, waited for at shutdown
        self._sends: Batcher[sends.SendRequest, tuple[dict[str, Any], bool]] = Batcher(
            self._send_batch
        )

    async def _write(
        self, work: Callable[[AsyncSession], Awaitable[tuple[T, list[Delivery]]]]
    ) -> T:
        """Run `work` in a transaction of an ORM session, publish its events after commit."""
        return await self._commit(self.db.transaction, work)

    async def _store(self, work: Callable[[Tx], Awaitable[tuple[T, list[Delivery]]]]) -> T:
        """`_write` for the send path, which needs no ORM session (chatcore.sends): on
        PostgreSQL not even a BEGIN, as the batch is stored by one statement.

        Friends without their direct conversation (from before accepting created it)
        get it in an ORM transaction of its own, then `work` runs again.
        """
        begin = partial(self.db.sql_transaction, implicit=True)
        try:
            return await self._commit(begin, work)
        except sends.MissingConversations as missing:
            pairs = missing.pairs
            await self._write(lambda tx: friends.create_direct(tx, pairs))
            return await self._commit(begin, work)

    async def _commit(
        self,
        begin: Callable[[], AbstractAsyncContextManager[H]],
        work: Callable[[H], Awaitable[tuple[T, list[Delivery]]]],
    ) -> T:
        """Run `work` in a transaction, publish its events after commit.

        A unique-constraint race (two first sends with one client_id, two people asking
        each other at once) is retried once: the second attempt sees the winner's row.
        """
        for attempt in (1, 2):
            try:
                async with self._working(), database_errors(), begin() as tx:
                    result, deliveries = await work(tx)
                break
            except IntegrityError:
                if attempt == 2:
                    raise
                log.info("write raced a concurrent one; retrying")
        if deliveries:
            self._commits += 1
            if self._commits == self.settings.fault_exit_after_commits:
                # Fault injection (tests only): die between commit and publish, the
                # case the outbox exists for.
                log.warning("fault injection: exiting after commit %d", self._commits)
                os._exit(70)
        await self.publisher.publish(deliveries)
        return result

    async def _read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self._working(), database_errors(), self.db.transaction() as tx:
            return await work(tx)

    @asynccontextmanager
    async def _working(self) -> AsyncIterator[None]:
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    async def wait_idle(self, timeout: float) -> None:
        """Until no request is using the database (or `timeout`): shutdown closes the
        engine after this, so no transaction is cut mid-way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._busy or self._sends.busy) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        async def work(tx: AsyncSession) -> tuple[dict[str, Any], list[Delivery]]:
            return await accounts.register(tx, self.passwords, body), []

        return await self._write(work)

    async def login(self, body: dict[str, Any]) -> dict[str, Any]:
        async def work(tx: AsyncSession) -> tuple[dict[str, Any], list[Delivery]]:
            user = await accounts.authenticate(tx, self.passwords, body)
            token = await self.sessions.create(tx, user)
            return {**accounts.public(user), "token": token}, []

        return await self._write(work)

    async def logout(self, token: str) -> None:
        async def work(tx: AsyncSession) -> tuple[None, list[Delivery]]:
            await self.sessions.revoke(tx, token)
            return None, []

        await self._write(work)

    async def verify(self, token: str) -> dict[str, Any]:
        return await self._read(lambda tx: self.sessions.verify(tx, token))

    async def friends(self, user_id: int) -> dict[str, Any]:
        return await self._read(lambda tx: friends.listing(tx, user_id))

    async def request_friend(
        self, user_id: int, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        async def work(tx: AsyncSession) -> tuple[tuple[dict[str, Any], bool], list[Delivery]]:
            result, changed, deliveries = await friends.request(tx, user_id, body)
            return (result, changed), deliveries

        return await self._write(work)

    async def remove_friend(self, user_id: int, other_id: int) -> None:
        async def work(tx: AsyncSession) -> tuple[None, list[Delivery]]:
            return None, await friends.remove(tx, user_id, other_id)

        await self._write(work)

    async def send(self, user_id: int, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Check the body at once; store it with the sends queued meanwhile (group commit)."""
        request = sends.parse(user_id, body, self.settings.max_message_chars)
        return await self._sends.submit(request)

    async def send_many(
        self, items: list[tuple[int, Any]]
    ) -> list[tuple[dict[str, Any], bool] | ApiError]:
        """`send` for each (user_id, body) a gateway batched; each its own outcome.

        They join the group commit together, so a gateway's batch usually shares one
        transaction. A failure that is not an ApiError is logged here and answered as a
        500 for that send alone.
        """

        async def one(user_id: int, body: Any) -> tuple[dict[str, Any], bool] | ApiError:
            try:
                if not isinstance(body, dict):
                    raise bad_request("Each send needs a JSON object.", "invalid_json")
                return await self.send(user_id, body)
            except ApiError as exc:
                return exc
            except Exception:
                log.exception("a batched send failed")
                return ApiError(500, "internal_error", "Something went wrong on our side.")

        return list(await asyncio.gather(*(one(user_id, body) for user_id, body in items)))

    async def _send_batch(
        self, requests: list[sends.SendRequest]
    ) -> Sequence[tuple[dict[str, Any], bool] | BaseException]:
        """One transaction for the whole batch, published after commit.

        A batch that fails as a whole (not the per-send refusals, which are outcomes) is
        retried one send per transaction: nothing of it was committed, and one bad send
        must not fail the others. An unreachable database is everyone's 503 at once.
        """
        published = self.publisher.take_published()

        async def work(tx: Tx) -> tuple[list[sends.Outcome], list[Delivery]]:
            return await sends.store(tx, requests, published)

        try:
            return await self._store(work)
        except BaseException as exc:
            self.publisher.give_back(published)
            if not isinstance(exc, Exception):
                raise
            unavailable = isinstance(exc, ApiError) and exc.status == 503
            if len(requests) == 1 or unavailable:
                raise
            log.warning("a batch of %d sends failed; storing them one by one", len(requests))
        return [await self._send_alone(request) for request in requests]

    async def _send_alone(
        self, request: sends.SendRequest
    ) -> tuple[dict[str, Any], bool] | BaseException:
        try:
            (outcome,) = await self._store(lambda tx: sends.store(tx, [request]))
        except Exception as exc:
            return exc
        return outcome

    async def conversations(self, user_id: int) -> list[dict[str, Any]]:
        return await self._read(lambda tx: messaging.conversations(tx, user_id))

    async def history(
        self, user_id: int, conversation_id: int, before: int | None, limit: int | None
    ) -> dict[str, Any]:
        return await self._read(
            lambda tx: messaging.history(tx, user_id, conversation_id, before, limit)
        )

    async def mark_read(
        self, user_id: int, conversation_id: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        async def work(tx: AsyncSession) -> tuple[dict[str, Any], list[Delivery]]:
            return await messaging.mark_read(tx, user_id, conversation_id, body)

        return await self._write(work)

    async def create_room(self, user_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return await self._write(lambda tx: rooms.create(tx, user_id, body))

    async def invite(self, user_id: int, room_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return await self._write(lambda tx: rooms.invite(tx, user_id, room_id, body))

    async def leave_room(self, user_id: int, room_id: int) -> None:
        async def work(tx: AsyncSession) -> tuple[None, list[Delivery]]:
            return None, await rooms.leave(tx, user_id, room_id)

        await self._write(work)

    async def room(self, user_id: int, room_id: int) -> dict[str, Any]:
        return await self._read(lambda tx: rooms.members(tx, user_id, room_id))

    async def typing(self, user_id: int, body: dict[str, Any]) -> None:
        """Tell the conversation's other members, right now and only now, who is typing."""

        async def work(tx: AsyncSession) -> tuple[list[int], dict[str, Any]]:
            conversation_id = field_int(body, "conversation_id")
            await messaging.require_member(tx, user_id, conversation_id)
            user = await accounts.by_id(tx, user_id)
            others = [u for u in await rooms.member_ids(tx, conversation_id) if u != user_id]
            return others, {
                "conversation_id": conversation_id,
                "user": accounts.public(user) if user else {"id": user_id},
            }

        others, event = await self._read(work)
        await self.publisher.publish_ephemeral(others, ephemeral("typing", event))

    async def presence(self, user_id: int, online: bool) -> None:
        """A gateway saw the user come or go: their friends' pages update at once."""
        await self.presence_many([(user_id, online)])

    async def presence_many(self, changes: list[tuple[int, bool]]) -> None:
        """`presence` for each (user_id, online) a gateway batched, in order: one read
        and one publish for them all. When a gateway's users go all at once (clients
        cut, a gateway drained), one read each kept chatcore's loop from the sends for
        a quarter of a second (docs/benchmarks.md)."""
        user_ids = sorted({user_id for user_id, _ in changes})
        friends_of = await self._read(lambda tx: friends.friends_of(tx, user_ids))
        await self.publisher.publish_ephemerals(
            [
                (friends_of[user_id], ephemeral("presence", {"user_id": user_id, "online": online}))
                for user_id, online in changes
            ]
        )

    async def events(
        self, user_id: int, after: int, limit: int = EVENTS_PAGE
    ) -> tuple[list[Event], int]:
        return await self._read(lambda tx: eventlog.read_after(tx, user_id, after, limit))

    async def ping(self) -> None:
        async with self.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def head(self, user_id: int) -> int:
        return await self._read(lambda tx: eventlog.head(tx, user_id))
