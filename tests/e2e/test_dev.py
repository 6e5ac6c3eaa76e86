"""`longtail dev` and `longtail migrate` work on a fresh directory with no services."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.client import Client, messages
from tests.e2e.cluster import Cluster, Proc, longtail_command

pytestmark = pytest.mark.e2e


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LONGTAIL_", "REDIS_", "DATABASE_", "CHATCORE_"))
    }
    env.update({"LONGTAIL_ARGON2_MEMORY_KIB": "64", "LONGTAIL_ARGON2_TIME_COST": "1", **extra})
    return env


async def test_dev_runs_everything_on_embedded_defaults(tmp_path: Path, http):
    log = tmp_path / "dev.log"
    # Run where a user would: a fresh directory, which gets the SQLite file.
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [longtail_command(), "dev", "--port", "0"],
            env=clean_env(),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while len(urls := re.findall(r"gateway +(http://\S+)/", log.read_text())) < 2:
            assert popen.poll() is None and loop.time() < end, log.read_text()
            await asyncio.sleep(0.05)
        waiter = Cluster(tmp_path, {})
        for url in urls:
            await waiter.wait_ready(Proc("dev", [], {}, log, url, "/readyz", popen))
        assert (tmp_path / "longtail.sqlite3").exists()

        alice = await Client(http, urls[0]).signup(f"alice{uuid.uuid4().hex[:6]}")
        bob = await Client(http, urls[1]).signup(f"bob{uuid.uuid4().hex[:6]}")
        await alice.befriend(bob)
        bob.cursor = 2
        waiting = asyncio.create_task(bob.poll(timeout=10))
        await asyncio.sleep(0.2)
        await alice.send(bob, "hello from dev")
        assert messages(await asyncio.wait_for(waiting, 5)) == ["hello from dev"]
    finally:
        popen.send_signal(signal.SIGTERM)
        assert popen.wait(timeout=15) == 0, log.read_text()


def test_migrate_creates_the_schema_and_is_repeatable(tmp_path: Path):
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    for _ in range(2):
        result = subprocess.run(
            [longtail_command(), "migrate"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "fresh.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "events", "outbox", "messages", "alembic_version"} <= tables
