"""Fixtures shared by every layer of the suite: backends, settings, in-process services."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import fakeredis
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from chatcore.app import Chatcore
from chatcore.db import Database
from chatcore.migrate import migrate
from gateway.app import Gateway, subscriber_options
from gateway.shards import Shards, shards_for
from longtail import ioloop
from longtail.dev import start_embedded_redis
from longtail.redisconn import command_client, parse_redis_url
from longtail.settings import Settings
from tests.backends import REAL_DATABASE_URL, REAL_REDIS_URL, TABLES, describe
from tests.client import Client

RedisFactory = Callable[..., Redis]


def pytest_report_header() -> str:
    return describe()


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Migrate once per session: a SQLite template file, or the real PostgreSQL."""
    if REAL_DATABASE_URL:
        url = REAL_DATABASE_URL

        async def fresh() -> None:
            db = Database(url)
            async with db.engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
            await migrate(db)
            await db.close()

        asyncio.run(fresh())
        return url
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"

    async def build() -> None:
        db = Database(url)
        await migrate(db)
        await db.close()

    asyncio.run(build())
    return url


@pytest.fixture
async def database_url(migrated_database: str, tmp_path: Path) -> str:
    """An empty, migrated database for this test."""
    if REAL_DATABASE_URL:
        db = Database(migrated_database)
        async with db.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        await db.close()
        return migrated_database
    template = Path(migrated_database.removeprefix("sqlite+aiosqlite:///"))
    target = tmp_path / "longtail.sqlite3"
    shutil.copy(template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def redis_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_factory(redis_prefix: str) -> AsyncIterator[RedisFactory]:
    """Makes Redis clients for one test: each component gets its own, as in production."""
    made: list[Redis] = []
    server = fakeredis.FakeServer()

    def make(**kwargs: Any) -> Redis:
        client = (
            command_client(REAL_REDIS_URL, max_connections=64, **kwargs)
            if REAL_REDIS_URL
            else fakeredis.FakeAsyncRedis(server=server, **kwargs)
        )
        made.append(client)
        return client

    yield make
    if REAL_REDIS_URL:
        cleaner = command_client(REAL_REDIS_URL, max_connections=4)
        keys = [k async for k in cleaner.scan_iter(match=f"{redis_prefix}:*", count=1000)]
        for key in keys:  # one at a time: on a Cluster they live in different slots
            await cleaner.delete(key)
        await cleaner.aclose()
    for client in made:
        await client.aclose()


@pytest.fixture
def redis_target() -> Iterator[tuple[str, int]]:
    """A Redis reachable over TCP: the real one, or a fakeredis server in a thread."""
    if REAL_REDIS_URL:
        if parse_redis_url(REAL_REDIS_URL).kind != "single":
            pytest.skip("a proxy in front of one server: runs on the single-server passes")
        parts = urlsplit(REAL_REDIS_URL)
        yield parts.hostname or "127.0.0.1", parts.port or 6379
        return
    url, stop = start_embedded_redis()
    parts = urlsplit(url)
    yield parts.hostname or "127.0.0.1", parts.port or 0
    stop()


@pytest.fixture
def settings(database_url: str, redis_prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REAL_REDIS_URL or "redis://127.0.0.1:6379/0",
        redis_prefix=redis_prefix,
        host="127.0.0.1",
        # The cheapest argon2 the library accepts: tests register hundreds of users.
        argon2_time_cost=1,
        argon2_memory_kib=64,
        poll_timeout=5,
        poll_timeout_max=30,
        heartbeat=1,
        unsubscribe_grace=0.2,
    )


@dataclass
class Stack:
    """chatcore and two gateways in this process, as `longtail dev` runs them."""

    core: Chatcore
    gateways: list[Gateway]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{g.port}" for g in self.gateways]


def subscriber(redis_factory: RedisFactory) -> Redis | Shards:
    """The gateway's subscriber on the suite's Redis: a Cluster needs one per node."""
    if REAL_REDIS_URL:
        return shards_for(REAL_REDIS_URL, **subscriber_options())
    return redis_factory(**subscriber_options())


@pytest.fixture
async def stack(settings: Settings, redis_factory: RedisFactory) -> AsyncIterator[Stack]:
    ioloop.install()  # as `longtail chatcore` and `longtail gateway` run
    core = Chatcore(settings, redis=redis_factory())
    await core.start(0)
    gw_settings = settings.with_(chatcore_url=f"http://127.0.0.1:{core.port}")
    gateways = [
        Gateway(gw_settings, redis=redis_factory(), subscriber=subscriber(redis_factory))
        for _ in range(2)
    ]
    for gateway in gateways:
        await gateway.start(0)
        assert await gateway.hub.wait_healthy(5)
    yield Stack(core, gateways)
    for gateway in gateways:
        await gateway.stop()
    await core.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def new_client(http: aiohttp.ClientSession, stack: Stack) -> Callable[..., Client]:
    def make(gateway: int = 0) -> Client:
        return Client(http, stack.urls[gateway])

    return make


@pytest.fixture
async def pair(new_client: Callable[..., Client]) -> tuple[Client, Client]:
    """alice on gateway 0 and bob on gateway 1, already friends."""
    alice = await new_client(0).signup(f"alice{uuid.uuid4().hex[:6]}")
    bob = await new_client(1).signup(f"bob{uuid.uuid4().hex[:6]}")
    await alice.befriend(bob)
    return alice, bob
