"""The database engine: SQLite (default) or PostgreSQL, through SQLAlchemy's async API,
and on PostgreSQL the send path's statements straight to asyncpg (Tx)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# Seconds a SQLite writer waits for another's lock before failing.
SQLITE_BUSY_TIMEOUT = 30
# A pooled PostgreSQL connection idle longer than this is pinged before use (see
# _ping_idle_connections); under load connections are never idle that long.
PING_IDLE_AFTER = 1.0
# Every PostgreSQL statement is planned once per connection, for any parameters. The
# send path's statements take their requests as arrays (chatcore.send_statement), and
# PostgreSQL's default re-plans a prepared statement for each call's values whenever
# that plan looks cheaper than the generic one. For a batch of one send it always did
# once the database held about 2,000 friendships (not at 1,000): 1.5 ms of planning in
# every send (issue 5). Chatcore's statements look rows up by key: one plan fits all.
# And that plan reads those rows by key: with random_page_cost at its default of 4, made
# for disks that seek, the generic plan scanned the users and friendships whole into hash
# tables until about 10,000 users, for a batch of one send as for fifty. The rows chatcore
# reads are the ones every send reads, and they stay in PostgreSQL's cache.
SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan", "random_page_cost": "1.1"}


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT}, **kwargs)
        _serialize_sqlite_writers(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    connect_args = kwargs.setdefault("connect_args", {})
    connect_args["server_settings"] = {**SERVER_SETTINGS, **connect_args.get("server_settings", {})}
    engine = create_async_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Check a pooled connection before use only if it sat idle for a while.

    A database restart, failover or a proxy's idle timeout closes pooled connections
    without telling the pool; the one handed out next would fail its request. SQLAlchemy's
    pool_pre_ping pings on every checkout, which on asyncpg is three round trips (BEGIN,
    the ping, ROLLBACK): a fifth of a send's database traffic in the profile. A connection
    that was in use moments ago is almost surely alive; one idle longer is pinged, and a
    failed ping makes the pool replace it (DisconnectionError).
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _serialize_sqlite_writers(engine: AsyncEngine) -> None:
    """Take SQLite's write lock at BEGIN.

    pysqlite's default deferred transactions let two writers both read and then fail to
    upgrade their lock; BEGIN IMMEDIATE makes the second wait (busy timeout) instead.
    WAL lets readers in other processes carry on meanwhile.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# What asyncpg raises when the server ends a connection that it has not yet seen close:
# the shutdown notice itself, or (when the notice came while the connection was idle)
# its protocol left waiting for the end of an error that the next statement trips on.
CONNECTION_ENDING = (
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,
)
# What asyncpg raises for a statement on a connection that may have ended.
CONNECTION_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


class Tx:
    """One transaction's connection, as the send path and the event log run statements.

    On PostgreSQL they are SQL texts with `$n` parameters (`rows`, `many`). In a
    Database.sql_transaction they go to asyncpg itself: through SQLAlchemy's execution
    layer a statement cost 146 µs of CPU against asyncpg's 54 here. In an ORM write
    (the events it appends) they go through SQLAlchemy, in the session's transaction.
    On SQLite the callers use `core`.
    """

    __slots__ = ("core", "driver", "postgres")

    def __init__(self, core: AsyncConnection, driver: asyncpg.Connection | None = None) -> None:
        self.core = core
        self.driver = driver
        self.postgres = core.dialect.name == "postgresql"

    async def rows(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        if self.driver is not None:
            return await self.driver.fetch(sql, *args)
        result = await self.core.exec_driver_sql(sql, args)
        return result.all() if result.returns_rows else []

    async def many(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        """One statement for each tuple of `args`, pipelined."""
        if self.driver is not None:
            await self.driver.executemany(sql, args)
        else:
            await self.core.exec_driver_sql(sql, args)


def watch_statements(engine: AsyncEngine, callback: Callable[[str], None]) -> None:
    """Call `callback` with the text of every statement asyncpg runs on the engine's
    pooled connections, from the next checkout on (asyncpg's query log, which calls
    back soon after each one).

    For counting (benches, tests): SQLAlchemy's events miss what goes to asyncpg itself
    (Tx), and asyncpg's log misses what SQLAlchemy runs as prepared statements; both
    see the BEGINs and COMMITs, asyncpg's log those of Database.sql_transaction too.
    """
    watched: set[int] = set()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if id(driver) not in watched:
            watched.add(id(driver))
            driver.add_query_logger(lambda logged: callback(logged.query))


class Database:
    """Owns the engine and hands out transactions."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # The send path's connection between its transactions, with when it was last used.
        self._kept: tuple[AsyncConnection, asyncpg.Connection, float] | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def sql_transaction(self, *, implicit: bool = False) -> AsyncIterator[Tx]:
        """A transaction without an ORM session, for the send path (chatcore.sends) and
        the outbox; on PostgreSQL, asyncpg's own.

        SQLAlchemy would begin its transaction only at its first statement, and none of
        these statements passes through it, so asyncpg begins and commits this one. Its
        failures come out as SQLAlchemy's, which the callers already handle: a lost
        connection is an OperationalError (and the pool drops the connection), a
        unique-constraint race an IntegrityError (retried).

        `implicit`: on PostgreSQL, no BEGIN and no COMMIT: each statement is a
        transaction of its own. For work that writes in one statement
        (chatcore.send_statement), where those two would be two of its three round trips.
        """
        if self.engine.dialect.name != "postgresql":
            async with self.engine.begin() as conn:
                yield Tx(conn)
            return
        # One connection is kept out of the pool between these transactions: a checkout
        # and check-in cost 140 to 180 µs of CPU here (greenlets, the pool's events, and
        # `async with engine.connect()` closing in a task of its own, shielded from
        # cancellation: three more turns of the event loop), more than the statement's
        # own round trip on asyncpg (about 100 µs), once per batch of sends (issue 5).
        conn, driver = await self._take_connection()
        keep = False
        try:
            try:
                if implicit:
                    yield Tx(conn, driver)
                else:
                    async with driver.transaction():
                        yield Tx(conn, driver)
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise IntegrityError("send transaction", None, exc) from exc
            except CONNECTION_ERRORS as exc:
                if not (driver.is_closed() or isinstance(exc, CONNECTION_ENDING)):
                    raise
                await conn.invalidate(exc)
                raise OperationalError("send transaction", None, exc) from exc
            keep = self._kept is None
        finally:
            if keep:
                self._kept = (conn, driver, time.monotonic())
            else:
                await _put_back(conn)

    async def _take_connection(self) -> tuple[AsyncConnection, asyncpg.Connection]:
        """The kept connection, else one from the pool. One kept longer than
        PING_IDLE_AFTER is pinged first, as the pool pings its own
        (_ping_idle_connections): a database restart may have closed it meanwhile."""
        kept, self._kept = self._kept, None
        if kept is not None:
            conn, driver, since = kept
            if time.monotonic() - since < PING_IDLE_AFTER:
                return conn, driver
            try:
                await driver.execute("SELECT 1")
            except CONNECTION_ERRORS as exc:
                await conn.invalidate(exc)  # the pool opens a new one instead
            except BaseException:
                await _put_back(conn)
                raise
            else:
                return conn, driver
            await _put_back(conn)
        conn = await self.engine.connect()
        try:
            raw = await conn.get_raw_connection()
        except BaseException:
            await _put_back(conn)
            raise
        return conn, cast(asyncpg.Connection, raw.driver_connection)

    async def close(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            await _put_back(kept[0])
        await self.engine.dispose()


async def _put_back(conn: AsyncConnection) -> None:
    """Return `conn` to the pool even if the caller is cancelled meanwhile, as
    `async with engine.connect()` does: closing an overflow connection waits on I/O."""
    await asyncio.shield(conn.close())
