"""Which Redis and database the suite runs on.

By default: fakeredis and a SQLite file per test. With LONGTAIL_TEST_REDIS_URL and
LONGTAIL_TEST_DATABASE_URL set (as .ci/run does): the real Redis and PostgreSQL, and a
service that does not answer fails the run rather than skipping it.
"""

from __future__ import annotations

import os

from longtail.settings import database_url

REAL_REDIS_URL = os.environ.get("LONGTAIL_TEST_REDIS_URL") or None
_db = os.environ.get("LONGTAIL_TEST_DATABASE_URL")
REAL_DATABASE_URL = database_url(_db) if _db else None

TABLES = (
    "outbox",
    "events",
    "messages",
    "conversation_members",
    "conversations",
    "friendships",
    "sessions",
    "users",
)


def describe() -> str:
    redis = f"redis {REAL_REDIS_URL}" if REAL_REDIS_URL else "fakeredis"
    db = f"database {REAL_DATABASE_URL}" if REAL_DATABASE_URL else "SQLite"
    return f"backends: {redis}, {db}"
