"""Fixtures of the unit tests that drive chatcore's service directly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatcore.db import Database
from chatcore.service import Chat


@pytest.fixture
async def chat(settings, redis_factory) -> AsyncIterator[Chat]:
    """chatcore's service on the test's database and Redis, no HTTP in between."""
    db = Database(settings.database_url)
    chat = Chat(settings, db, redis_factory())
    yield chat
    await db.close()
