"""The chaos run, short: gateways SIGKILLed, Redis restarted empty, chatcore dead between
commit and publish, the database cut off (PostgreSQL runs) — and every message arrives
once, in order. `python -m bench.chaos` is the long version of the same engine."""

from __future__ import annotations

import shutil

import pytest

from bench.chaos import ChaosConfig, run_chaos
from tests.backends import REAL_DATABASE_URL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_nothing_is_lost_or_repeated_while_everything_fails(tmp_path, migrated_database):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed: the chaos run restarts a Redis of its own")
    database = REAL_DATABASE_URL.replace("+asyncpg", "") if REAL_DATABASE_URL else None
    report = await run_chaos(ChaosConfig(database_url=database), tmp_path)
    print(report.summary())
    assert report.clean, report.summary()
    assert report.delivered == report.messages
    kinds = " ".join(report.faults)
    assert kinds.count("SIGKILL gateway") == 3 and "Redis killed" in kinds
    assert "chatcore died after a commit" in kinds
    if database:
        assert "database unreachable" in kinds
