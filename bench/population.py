"""Users who never send, so that a bench's tables are a deployment's size, not a bench's.

PostgreSQL plans for a throw-away deployment's hundred users as for no real one: the
send statement that re-planned itself for every call once the database held about 2,000
friendships never did on the bench's (chatcore.db.SERVER_SETTINGS). The bystanders are
written straight into the run's database, in pairs of friends with their direct
conversation, as the API would leave them (registering ten thousand through it takes
minutes: argon2 and a round trip each). PostgreSQL only.
"""

from __future__ import annotations

import secrets

import asyncpg

from bench.cluster import admin_dsn
from chatcore.friends import ACCEPTED


async def add_bystanders(database_url: str, count: int) -> None:
    """`count` more users (rounded down to pairs) in `database_url`, a PostgreSQL URL
    (either spelling: asyncpg's, or SQLAlchemy's postgresql+asyncpg://)."""
    pairs = count // 2
    if pairs < 1:
        return
    tag = secrets.token_hex(3)
    conn = await asyncpg.connect(admin_dsn(database_url))
    try:
        async with conn.transaction():
            ids = sorted(
                row["id"]
                for row in await conn.fetch(
                    "INSERT INTO users (username, username_key, password_hash, created_at)"
                    " SELECT 'by' || $1::text || g, 'by' || $1::text || g, '!', now()"
                    " FROM generate_series(1, $2::int) AS g ORDER BY g RETURNING id",
                    tag,
                    2 * pairs,
                )
            )
            lows, highs = ids[0::2], ids[1::2]
            await conn.execute(
                "INSERT INTO friendships (user_low, user_high, requester_id, status, created_at)"
                " SELECT low, high, low, $3, now()"
                " FROM unnest($1::bigint[], $2::bigint[]) AS p(low, high)",
                lows,
                highs,
                ACCEPTED,
            )
            await conn.execute(
                "WITH rooms AS (INSERT INTO conversations (kind, direct_key, created_at)"
                " SELECT 'direct', low || ':' || high, now()"
                " FROM unnest($1::bigint[], $2::bigint[]) AS p(low, high)"
                " RETURNING id, direct_key)"
                " INSERT INTO conversation_members (conversation_id, user_id)"
                " SELECT id, split_part(direct_key, ':', side)::bigint"
                " FROM rooms, generate_series(1, 2) AS side",
                lows,
                highs,
            )
        await conn.execute("ANALYZE")  # as autovacuum would soon after
    finally:
        await conn.close()
