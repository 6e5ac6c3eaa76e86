"""Who is online: a user is online while any gateway holds one of their connections.

Each user has a small sorted set in Redis of the gateways holding them, scored by an
expiry that each gateway refreshes. A user's first connection on a gateway adds it; their
last one leaving (after the hub's grace period, so a reconnect does not flicker) removes
it. When that flips the user between online and offline, chatcore pushes an ephemeral
`presence` event to their friends. Those flips go to chatcore in batches
(longtail.batching): when many users go at once (their clients cut, a gateway drained),
one request and one read in chatcore carry them all. A gateway that dies stops
refreshing: its entries expire after PRESENCE_TTL and listings show the user offline
(without a push).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.chatcore_client import ChatcoreClient
from gateway.hub import Hub
from longtail.batching import Batcher
from longtail.errors import ApiError
from longtail.wire import Keys

log = logging.getLogger("longtail.gateway.presence")

PRESENCE_REFRESH = 10.0
PRESENCE_TTL = 30.0
# Presence changes per request to chatcore (it takes up to 1,000).
MAX_ANNOUNCE_BATCH = 500
ANNOUNCE_PATH = "/internal/presence"


class Presence:
    def __init__(self, redis: Redis, keys: Keys, hub: Hub, chatcore: ChatcoreClient) -> None:
        self._redis = redis
        self._keys = keys
        self._hub = hub
        self._chatcore = chatcore
        self._gateway = hub.gateway_id
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._announcements: Batcher[tuple[int, bool], None] = Batcher(
            self._announce_batch, MAX_ANNOUNCE_BATCH
        )
        hub.on_arrive = lambda user_id: self._spawn(self._arrive(user_id))
        hub.on_leave = lambda user_id: self._spawn(self._leave(user_id))

    async def online(self, user_ids: list[int]) -> set[int]:
        if not user_ids:
            return set()
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.zcount(self._keys.presence(user_id), f"({now}", "+inf")
        try:
            counts = await pipe.execute()
        except RedisError as exc:
            log.info("presence read failed: %s", exc)
            return set()
        return {u for u, n in zip(user_ids, counts, strict=True) if n}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        self._stopped = True
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._announcements.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._stopped:
            # Stopping (the Redis client is about to close): the entry expires by itself.
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _arrive(self, user_id: int) -> None:
        key, now = self._keys.presence(user_id), time.time()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zcount(key, f"({now}", "+inf")
            pipe.zadd(key, {self._gateway: now + PRESENCE_TTL})
            pipe.expire(key, int(PRESENCE_TTL) + 1)
            already, *_ = await pipe.execute()
        except RedisError as exc:
            log.info("presence update failed: %s", exc)
            return
        if not already:
            await self._announce(user_id, True)

    async def _leave(self, user_id: int) -> None:
        key, now = self._keys.presence(user_id), time.time()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(key, self._gateway)
            pipe.zcount(key, f"({now}", "+inf")
            _, remaining = await pipe.execute()
        except RedisError as exc:
            log.info("presence update failed: %s", exc)
            return
        if not remaining:
            await self._announce(user_id, False)

    async def _announce(self, user_id: int, online: bool) -> None:
        await self._announcements.submit((user_id, online))

    async def _announce_batch(self, changes: list[tuple[int, bool]]) -> list[None]:
        """Best effort, as the pushes are: a failure is logged once for the batch."""
        body = {"changes": [{"user_id": user_id, "online": online} for user_id, online in changes]}
        try:
            try:
                await self._chatcore.request("POST", ANNOUNCE_PATH, body=body)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                # A chatcore from before the batched route (mid-upgrade): one each.
                for user_id, online in changes:
                    await self._chatcore.request(
                        "POST", f"/internal/users/{user_id}/presence", body={"online": online}
                    )
        except ApiError as exc:
            log.info("presence push of %d change(s) failed: %s", len(changes), exc.code)
        return [None] * len(changes)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_REFRESH)
            expiry = time.time() + PRESENCE_TTL
            try:
                pipe = self._redis.pipeline(transaction=False)
                for user_id in self._hub.local_users():
                    key = self._keys.presence(user_id)
                    pipe.zadd(key, {self._gateway: expiry})
                    pipe.expire(key, int(PRESENCE_TTL) + 1)
                await pipe.execute()
            except RedisError as exc:
                log.info("presence refresh failed: %s", exc)
