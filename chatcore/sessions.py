"""Login sessions: opaque random tokens, stored hashed, cached in Redis for the gateways.

Gateways read the cache and never write it; chatcore writes it at login, on a cache miss
it has verified, and deletes it at logout, then announces the logout on the user's
channel, so a logout takes effect on every gateway at once (including a gateway that
kept the session in its own process while it hears that channel).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from datetime import datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore.models import Session, User, utcnow
from longtail.errors import ApiError
from longtail.wire import Keys, revoked_message

log = logging.getLogger("longtail.chatcore.sessions")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


class Sessions:
    def __init__(self, redis: Redis, keys: Keys, ttl: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl

    async def create(self, tx: AsyncSession, user: User) -> str:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        tx.add(
            Session(
                token_hash=token_hash(token),
                user_id=user.id,
                created_at=now,
                expires_at=now + timedelta(seconds=self._ttl),
            )
        )
        await self._cache(token_hash(token), user.id, user.username, self._ttl)
        return token

    async def verify(self, tx: AsyncSession, token: str) -> dict[str, object]:
        digest = token_hash(token)
        row = (
            await tx.execute(
                select(Session.expires_at, User.id, User.username)
                .join(User, User.id == Session.user_id)
                .where(Session.token_hash == digest)
            )
        ).first()
        remaining = (aware(row.expires_at) - utcnow()).total_seconds() if row else 0
        if row is None or remaining <= 0:
            raise ApiError(
                401, "unauthorized", "The session is invalid or has expired; log in again."
            )
        await self._cache(digest, row.id, row.username, int(remaining))
        return {"id": row.id, "username": row.username}

    async def revoke(self, tx: AsyncSession, token: str) -> None:
        digest = token_hash(token)
        user_id = (
            await tx.execute(
                delete(Session).where(Session.token_hash == digest).returning(Session.user_id)
            )
        ).scalar_one_or_none()
        # Deleted from the cache even if the row was already gone; a failure here must
        # fail the logout, or the token would keep working on the gateways.
        await self._redis.delete(self._keys.session(digest))
        if user_id is not None:
            # Connections this session holds open end now, on every gateway (the user's
            # channel), and so does what any gateway kept of the session in its process
            # (the revocations channel, gateway.session_cache): a failure fails the
            # logout too (the transaction rolls back; the client may log out again).
            message = revoked_message(digest)
            await self._redis.spublish(self._keys.channel(user_id), message)
            await self._redis.spublish(self._keys.revocations(), message)

    async def _cache(self, digest: str, user_id: int, username: str, ttl: int) -> None:
        if ttl <= 0:
            return
        try:
            await self._redis.set(
                self._keys.session(digest),
                json.dumps({"id": user_id, "username": username}),
                ex=ttl,
            )
        except RedisError as exc:
            # The gateways fall back to asking chatcore; nothing is wrong but speed.
            log.warning("session cache unavailable: %s", exc)
