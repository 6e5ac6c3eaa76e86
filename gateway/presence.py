"""Who is online: a user is online while any gateway holds one of their connections.

Each gateway refreshes its local users in one Redis sorted set (score = expiry); a
gateway that dies stops refreshing and its users fade out after PRESENCE_TTL, which is
also the grace that keeps a reconnecting user from flickering offline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.hub import Hub
from longtail.wire import Keys

log = logging.getLogger("longtail.gateway.presence")

PRESENCE_REFRESH = 10.0
PRESENCE_TTL = 30.0


class Presence:
    def __init__(self, redis: Redis, keys: Keys, hub: Hub) -> None:
        self._redis = redis
        self._key = keys.presence()
        self._hub = hub
        self._fresh: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    async def touch(self, user_id: int) -> None:
        """Mark a user online now, once per refresh period."""
        if user_id in self._fresh:
            return
        self._fresh.add(user_id)
        try:
            await self._redis.zadd(self._key, {str(user_id): time.time() + PRESENCE_TTL})
        except RedisError as exc:
            log.info("presence update failed: %s", exc)

    async def online(self, user_ids: list[int]) -> set[int]:
        if not user_ids:
            return set()
        try:
            scores = await self._redis.zmscore(self._key, [str(u) for u in user_ids])
        except RedisError as exc:
            log.info("presence read failed: %s", exc)
            return set()
        now = time.time()
        return {u for u, s in zip(user_ids, scores, strict=True) if s is not None and s > now}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_REFRESH)
            users = self._hub.local_users()
            self._fresh = set(users)
            now = time.time()
            try:
                pipe = self._redis.pipeline(transaction=False)
                if users:
                    pipe.zadd(self._key, {str(u): now + PRESENCE_TTL for u in users})
                pipe.zremrangebyscore(self._key, "-inf", now)
                await pipe.execute()
            except RedisError as exc:
                log.info("presence refresh failed: %s", exc)
