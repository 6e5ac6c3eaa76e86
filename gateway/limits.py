"""Limits that keep one user (or one address) from taking everyone's share.

- Rates (sends, friend requests, login attempts) are counted in Redis, so a client
  spreading its requests over every gateway still meets one limit: fixed windows, one
  key per subject and window, expiring with it. If Redis is down the request goes
  through: losing the limit for a moment beats refusing every message.
- Held connections are counted per gateway, per user and per address; past the limit
  the new one is refused (429), and a gateway full to LONGTAIL_MAX_CONNECTIONS answers
  503 with Retry-After so the load balancer's next try lands elsewhere.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from longtail.batching import Batcher
from longtail.errors import ApiError
from longtail.wire import Keys

log = logging.getLogger("longtail.gateway.limits")


@dataclass(frozen=True)
class Rate:
    name: str
    limit: int
    window: int  # seconds


# Count and window in one command: INCRBY, and whoever finds no expiry on the counter
# (its creator) gives it its window, so a running window is never extended.
TAKE = """
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {used, ttl}
"""


class RateLimiter:
    """Rate checks cost a Redis round trip each; at thousands of sends a second they were
    a quarter of the sending gateway's CPU (issue 5's profile). So the checks that arrive
    while one round trip is out share the next (longtail.batching), each one EVAL."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._counts: Batcher[tuple[str, int, int], tuple[int, int]] = Batcher(self._count)

    async def aclose(self) -> None:
        """Shutdown: no check left running on the Redis client about to close."""
        await self._counts.aclose()

    async def hit(self, rate: Rate, subject: str) -> None:
        """Count one use of `rate` by `subject`; a 429 with Retry-After past the limit."""
        allowed, refusal = await self.take(rate, subject, 1)
        if not allowed and refusal is not None:
            raise refusal

    async def take(self, rate: Rate, subject: str, count: int) -> tuple[int, ApiError | None]:
        """Count `count` uses at once (a WebSocket's queued sends): how many of them, the
        first ones, are within the limit, and the 429 for the rest (None if none)."""
        key = self._keys.rate(rate.name, subject)
        try:
            used, ttl = await self._counts.submit((key, count, rate.window))
        except RedisError as exc:
            log.warning("rate limit %s not checked, Redis unavailable: %s", rate.name, exc)
            return count, None
        allowed = max(0, min(count, rate.limit - (used - count)))
        if allowed == count:
            return count, None
        wait = max(1, int(ttl))
        return allowed, ApiError(
            429,
            "rate_limited",
            f"Too many {rate.name.replace('_', ' ')}: try again in {wait} s.",
            headers={"Retry-After": str(wait)},
        )

    async def _count(self, batch: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
        # No MULTI: a Cluster client would need one connection per slot for it.
        pipe = self._redis.pipeline(transaction=False)
        for key, count, window in batch:
            pipe.eval(TAKE, 1, key, count, window)
        return [(int(used), int(ttl)) for used, ttl in await pipe.execute()]


class ConnectionLimits:
    """Held connections of this gateway, by user and by client address."""

    def __init__(self, per_user: int, per_ip: int, total: int) -> None:
        self.per_user = per_user
        self.per_ip = per_ip
        self.total = total
        self._users: Counter[int] = Counter()
        self._ips: Counter[str] = Counter()
        self.held = 0
        # Set while the gateway cannot hear Redis: it could hold a request but never
        # complete it, so clients (and nginx's next-upstream) go to another gateway.
        self.redis_lost = False

    def check(self, user_id: int, ip: str) -> None:
        if self.redis_lost:
            raise ApiError(
                503,
                "redis_unavailable",
                "This server cannot receive events right now; try another.",
                headers={"Retry-After": "1"},
            )
        if self.held >= self.total:
            raise ApiError(
                503,
                "gateway_full",
                "This server is full; try again shortly.",
                headers={"Retry-After": "2"},
            )
        if self._users[user_id] >= self.per_user:
            raise ApiError(
                429, "too_many_connections", f"At most {self.per_user} open connections per user."
            )
        if self._ips[ip] >= self.per_ip:
            raise ApiError(
                429, "too_many_connections", f"At most {self.per_ip} open connections per address."
            )

    def acquire(self, user_id: int, ip: str) -> None:
        """Count a connection in, or refuse it (429/503) leaving the counts as they were.
        Every acquire is matched by exactly one release."""
        self.check(user_id, ip)
        self._users[user_id] += 1
        self._ips[ip] += 1
        self.held += 1

    def release(self, user_id: int, ip: str) -> None:
        self.held -= 1
        _release(self._users, user_id)
        _release(self._ips, ip)

    @contextmanager
    def admitted(self, user_id: int, ip: str) -> Iterator[None]:
        self.acquire(user_id, ip)
        try:
            yield
        finally:
            self.release(user_id, ip)


def _release(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
