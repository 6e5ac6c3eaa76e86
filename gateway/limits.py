"""Limits that keep one user (or one address) from taking everyone's share.

- Rates (sends, friend requests, login attempts) are counted in Redis, so a client
  spreading its requests over every gateway still meets one limit: fixed windows, one
  key per subject and window, expiring with it. If Redis is down the request goes
  through: losing the limit for a moment beats refusing every message. While a subject
  is far from its limit, a gateway counts a few uses ahead and spends them without
  asking Redis (RateLimiter).
- Held connections are counted per gateway, per user and per address; past the limit
  the new one is refused (429), and a gateway full to LONGTAIL_MAX_CONNECTIONS answers
  503 with Retry-After so the load balancer's next try lands elsewhere.
"""

from __future__ import annotations

import logging
import math
import time
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


# Count, lease and window in one command. The lease (uses counted ahead, for this
# gateway to spend alone) is taken only while the counter stays in the first half of the
# limit, and is at most an eighth of it: the uses another gateway cannot spend stay
# few, and near the limit every use is counted here, one by one. Whoever finds no expiry
# on the counter (its creator) gives it its window, so a running window is never
# extended. PTTL, not TTL (which rounds to the nearest second): a lease must not outlive
# its window.
TAKE = """
local count = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local lease = math.floor(limit / 2) - used - count
lease = math.min(tonumber(ARGV[4]), math.floor(limit / 8), lease)
if lease < 0 then
  lease = 0
end
used = redis.call('INCRBY', KEYS[1], count + lease)
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {used, ttl, lease}
"""

# The most uses one lease counts ahead: one round trip per this many sends from a user
# who sends steadily (within an eighth of the limit).
MOST_LEASED = 32
# How often leases past their window are dropped.
SWEEP_SECONDS = 10.0


@dataclass
class Lease:
    """Uses of one counter already counted in Redis, for this gateway to spend."""

    left: int
    ends: float  # time.monotonic() by which the counter's window has surely ended


class RateLimiter:
    """Rate checks cost a Redis round trip each; at thousands of sends a second they were
    a quarter of the sending gateway's CPU (issue 5's profile). So the checks that arrive
    while one round trip is out share the next (longtail.batching), each one EVAL, and
    while a subject is far from its limit one check counts a lease of uses ahead, which
    this gateway spends without a round trip (with 1,000 WebSocket sends/s among 50
    senders, that was 28% of the sending gateway's CPU and a third of the latency).

    No subject ever gets more than its limit, whichever gateways it uses: leased uses
    are counted in Redis when leased. What a lease costs is the other side: uses leased
    here and not spent before the window ends are refused elsewhere, so a client that
    moves to another gateway within a window may be refused early, by up to an eighth of
    its limit for each gateway it left (and, since leases are taken in the first half of
    the limit only, never by more than half).
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._counts: Batcher[tuple[str, int, Rate], tuple[int, int, int]] = Batcher(self._count)
        self._leases: dict[str, Lease] = {}
        self._next_sweep = time.monotonic() + SWEEP_SECONDS

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
        asked = time.monotonic()
        lease = self._leases.get(key)
        if lease is not None and lease.ends > asked and lease.left >= count:
            lease.left -= count
            return count, None
        try:
            used, ttl_ms, leased = await self._counts.submit((key, count, rate))
        except RedisError as exc:
            log.warning("rate limit %s not checked, Redis unavailable: %s", rate.name, exc)
            return count, None
        if leased:
            self._keep(key, leased, asked + ttl_ms / 1000)
        allowed = max(0, min(count, rate.limit - (used - leased - count)))
        if allowed == count:
            return count, None
        wait = max(1, math.ceil(ttl_ms / 1000))
        return allowed, ApiError(
            429,
            "rate_limited",
            f"Too many {rate.name.replace('_', ' ')}: try again in {wait} s.",
            headers={"Retry-After": str(wait)},
        )

    def _keep(self, key: str, leased: int, ends: float) -> None:
        # The window's end is reckoned from before the request went out, so it comes no
        # later than Redis's. A lease still open here is of the same window: add to it.
        now = time.monotonic()
        lease = self._leases.get(key)
        if lease is not None and lease.ends > now:
            lease.left += leased
        else:
            self._leases[key] = Lease(leased, ends)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_SECONDS
            for stale in [k for k, held in self._leases.items() if held.ends <= now]:
                del self._leases[stale]

    async def _count(self, batch: list[tuple[str, int, Rate]]) -> list[tuple[int, int, int]]:
        # No MULTI: a Cluster client would need one connection per slot for it.
        pipe = self._redis.pipeline(transaction=False)
        for key, count, rate in batch:
            pipe.eval(TAKE, 1, key, count, rate.window * 1000, rate.limit, MOST_LEASED)
        return [(int(used), int(ttl), int(lease)) for used, ttl, lease in await pipe.execute()]


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
