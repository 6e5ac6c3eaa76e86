"""`longtail check`: is this configuration usable from here? One line per dependency.

The settings were already validated (a bad value never gets this far); this reaches
Redis, the database (and its schema revision) and chatcore with short timeouts, and
prints what it found. Exit status 0 only when everything answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from sqlalchemy import text

from longtail.redisconn import command_client
from longtail.settings import ENV_VARS, Settings

TIMEOUT = 3.0


async def _redis(settings: Settings) -> str:
    client = command_client(settings.redis_url, max_connections=2, socket_connect_timeout=TIMEOUT)
    try:
        await client.ping()
        return f"redis at {settings.redis_url} answers PING"
    finally:
        await client.aclose()


async def _database(settings: Settings) -> str:
    from chatcore.db import Database

    db = Database(settings.database_url)
    try:
        async with db.engine.connect() as conn:
            try:
                revision = (
                    await conn.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar()
            except Exception:
                revision = None
        state = (
            f"schema {revision}" if revision else "reachable, not migrated: run longtail migrate"
        )
        return f"database {db.engine.url.render_as_string(hide_password=True)}: {state}"
    finally:
        await db.close()


async def _chatcore(settings: Settings) -> str:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(settings.chatcore_url + "/internal/health") as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"answered {resp.status}")
        return f"chatcore at {settings.chatcore_url}"


CHECKS: dict[str, Callable[[Settings], Awaitable[str]]] = {
    "REDIS_URL": _redis,
    "DATABASE_URL": _database,
    "CHATCORE_URL": _chatcore,
}


async def run_checks(settings: Settings) -> bool:
    print(f"configuration: ok ({len(ENV_VARS)} settings)")
    if settings.uses_dev_secret:
        print("LONGTAIL_SECRET: the development default (fine on one machine only)")
    healthy = True
    for variable, check in CHECKS.items():
        try:
            print(f"{variable}: ok, {await asyncio.wait_for(check(settings), 2 * TIMEOUT)}")
        except Exception as exc:
            healthy = False
            print(f"{variable}: FAILED, {type(exc).__name__}: {exc}")
    return healthy
