"""One process cluster per module: chatcore + three gateways on the suite's backends."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from chatcore.db import Database
from longtail.dev import start_embedded_redis
from tests.backends import REAL_DATABASE_URL, REAL_REDIS_URL, TABLES
from tests.e2e.browser import CHROMIUM_ARGS, chromium_path
from tests.e2e.cluster import Cluster, base_env, free_port
from tests.e2e.nginx import Nginx

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def e2e_redis_url() -> Iterator[str]:
    if REAL_REDIS_URL:
        yield REAL_REDIS_URL
        return
    url, stop = start_embedded_redis()
    yield url
    stop()


@pytest.fixture(scope="module")
def e2e_database_url(migrated_database: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if REAL_DATABASE_URL:

        async def empty() -> None:
            db = Database(REAL_DATABASE_URL)
            async with db.engine.begin() as conn:
                await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            await db.close()

        asyncio.run(empty())
        return REAL_DATABASE_URL
    target = tmp_path_factory.mktemp("e2e-db") / "longtail.sqlite3"
    shutil.copy(Path(migrated_database.removeprefix("sqlite+aiosqlite:///")), target)
    return f"sqlite:///{target}"


@pytest.fixture(scope="module")
def e2e_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, e2e_redis_url: str, e2e_database_url: str, e2e_workdir: Path
) -> Iterator[Cluster]:
    """A test module may set CLUSTER_ENV to configure its processes."""
    env = base_env(e2e_redis_url, e2e_database_url, f"e2e{uuid.uuid4().hex[:8]}")
    env.update(getattr(request.module, "CLUSTER_ENV", {}))
    procs = Cluster.build(e2e_workdir, env, gateways=3)
    try:
        asyncio.run(procs.start())
        yield procs
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def nginx(request: pytest.FixtureRequest, cluster: Cluster, e2e_workdir: Path) -> Iterator[Nginx]:
    """deploy/nginx.conf in front of the module's gateways (NGINX_GATEWAYS: how many)."""
    count = getattr(request.module, "NGINX_GATEWAYS", len(cluster.gateways))
    workdir = e2e_workdir / "nginx"
    workdir.mkdir(exist_ok=True)
    proxy = Nginx(workdir, cluster.urls[:count], free_port())
    checked = proxy.check()
    assert checked.returncode == 0, checked.stderr
    proxy.start()
    try:
        asyncio.run(proxy.wait_ready(cluster))
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    from playwright.async_api import async_playwright

    executable = chromium_path()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()
