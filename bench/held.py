"""RSS of one gateway per idle long-poll it holds.

The load process opens N long-polls (cursor = the user's newest seq, a timeout far
beyond the measurement) and waits for a real condition, not a sleep: the gateway
process owns N established sockets on its port, and every user's Redis channel is
subscribed (so each handler got past authentication into its wait). Only then is
VmRSS read. Steps are cumulative: 1,000, then 1,000 more, and so on.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.api import User, connector
from bench.cluster import BenchError, Service
from longtail.wire import Keys

# Long-polls opened together; each batch is confirmed held before the next. Above about
# 100, a gateway's Redis pool (redis-py's default of 100) runs out during the burst.
OPEN_BATCH = 100
BATCH_DEADLINE = 30.0
RELEASE_DEADLINE = 30.0
SETTLE = 0.5  # after the condition holds: let the last allocations land before reading RSS
ESTABLISHED = "01"
LISTEN = "0A"


@dataclass
class HeldStep:
    held: int
    users: int
    rss_kib: int
    seconds_to_hold: float

    def row(self, idle_rss_kib: int) -> dict[str, Any]:
        per_conn = (self.rss_kib - idle_rss_kib) / self.held
        return {
            **asdict(self),
            "kib_per_conn": round(per_conn, 2),
            "mib_per_1000": round(per_conn * 1000 / 1024, 2),
        }


def with_marginal(rows: list[dict[str, Any]], idle_rss_kib: int) -> list[dict[str, Any]]:
    """Add KiB per long-poll added since the previous step: the slope, without the
    one-off costs (pools, caches) a gateway pays for its first connections."""
    previous_held, previous_rss = 0, idle_rss_kib
    for row in rows:
        row["marginal_kib_per_conn"] = round(
            (row["rss_kib"] - previous_rss) / (row["held"] - previous_held), 2
        )
        previous_held, previous_rss = row["held"], row["rss_kib"]
    return rows


@dataclass
class HeldResult:
    conns_per_user: int
    poll_timeout: float
    idle_rss_kib: int = 0
    steps: list[HeldStep] = field(default_factory=list)
    rss_after_release_kib: int = 0
    rehold: list[HeldStep] = field(default_factory=list)
    returned_early: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "conns_per_user": self.conns_per_user,
            "poll_timeout_s": self.poll_timeout,
            "idle_rss_kib": self.idle_rss_kib,
            "steps": with_marginal(
                [step.row(self.idle_rss_kib) for step in self.steps], self.idle_rss_kib
            ),
            "rss_after_release_kib": self.rss_after_release_kib,
            "rehold": [step.row(self.rss_after_release_kib) for step in self.rehold],
            "returned_early": self.returned_early,
            "errors": self.errors,
        }


def connection_states(gateway: Service) -> Counter[str]:
    """TCP states of the connections on the gateway's port that the gateway owns.

    "01" (ESTABLISHED) is a held connection; a released one lingers in CLOSE_WAIT
    ("08") until the gateway notices the client left and closes its side. The listening
    socket is left out.
    """
    inodes = set()
    fd_dir = Path(f"/proc/{gateway.pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    port = f":{gateway.port:04X}"
    states: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                cols = row.split()
                if cols[1].endswith(port) and cols[3] != LISTEN and cols[9] in inodes:
                    states[cols[3]] += 1
    return states


async def subscribed_channels(redis: Redis, channels: list[str]) -> int:
    """How many of the channels have at least one subscriber (a gateway listening)."""
    counts = await redis.pubsub_shardnumsub(*channels) if channels else []
    return sum(1 for _, subscribers in counts if subscribers > 0)


async def wait_for(what: str, condition: Any, deadline: float) -> None:
    """Poll an async condition every 50 ms until true or the deadline (a BenchError)."""
    end = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() > end:
            raise BenchError(f"timed out after {deadline:g}s waiting for {what}")
        await asyncio.sleep(0.05)


class Holder:
    """The load side: owns the held requests and their connections."""

    def __init__(
        self,
        gateway: Service,
        users: list[User],
        cursors: list[int],
        conns_per_user: int,
        poll_timeout: float,
        redis: Redis,
        keys: Keys,
        open_batch: int = OPEN_BATCH,
    ) -> None:
        self.gateway = gateway
        self.open_batch = open_batch
        self.users = users
        self.cursors = cursors
        self.conns_per_user = conns_per_user
        self.poll_timeout = poll_timeout
        self.redis = redis
        self.keys = keys
        self.http = aiohttp.ClientSession(connector=connector())
        self.tasks: list[asyncio.Task[None]] = []
        self.returned_early = 0

    def users_for(self, held: int) -> list[User]:
        return self.users[: -(-held // self.conns_per_user)]

    async def hold_one(self, index: int) -> None:
        """One long-poll that should stay open until we cancel it."""
        user_index = index // self.conns_per_user
        user = self.users[user_index]
        url = (
            f"{self.gateway.url}/api/events?cursor={self.cursors[user_index]}"
            f"&timeout={self.poll_timeout:g}"
        )
        timeout = aiohttp.ClientTimeout(total=self.poll_timeout + 30)
        try:
            async with self.http.get(url, headers=user.auth, timeout=timeout) as resp:
                await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            pass
        self.returned_early += 1  # only reached when the request ended by itself

    async def grow_to(self, target: int) -> float:
        """Open long-polls up to `target`, in batches; seconds until all were held."""
        started = time.monotonic()
        while len(self.tasks) < target:
            batch_end = min(target, len(self.tasks) + self.open_batch)
            self.tasks += [
                asyncio.create_task(self.hold_one(i)) for i in range(len(self.tasks), batch_end)
            ]
            await self.wait_held(batch_end)
        return time.monotonic() - started

    async def wait_held(self, count: int) -> None:
        channels = [self.keys.channel(u.id) for u in self.users_for(count)]

        async def all_held() -> bool:
            if self.returned_early:
                raise BenchError(f"{self.returned_early} long-poll(s) returned while held")
            return connection_states(self.gateway)[
                ESTABLISHED
            ] >= count and await subscribed_channels(self.redis, channels) == len(channels)

        await wait_for(f"{count} held long-polls", all_held, BATCH_DEADLINE)

    async def release(self) -> None:
        """Cancel every request and close its connection; wait until the gateway sees it."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.close()

        async def all_gone() -> bool:
            return not connection_states(self.gateway)

        await wait_for("the gateway to drop the released connections", all_gone, RELEASE_DEADLINE)


def held_steps(max_held: int) -> list[int]:
    """1,000, 2,000, 5,000, 10,000, 15,000... up to and including max_held."""
    steps = [s for s in (1000, 2000, 5000, 10_000, 15_000) if s < max_held]
    return [*steps, max_held]


async def hold_steps(holder: Holder, steps: list[int], errors: list[str]) -> list[HeldStep]:
    """Grow through `steps`, reading RSS at each, then release everything."""
    measured: list[HeldStep] = []
    try:
        for step in steps:
            seconds = await holder.grow_to(step)
            await asyncio.sleep(SETTLE)
            measured.append(
                HeldStep(
                    step, len(holder.users_for(step)), holder.gateway.rss_kib(), round(seconds, 2)
                )
            )
    except BenchError as exc:
        errors.append(str(exc))
    finally:
        try:
            await holder.release()
        except BenchError as exc:
            errors.append(str(exc))
    return measured


async def measure_held(
    gateway: Service,
    users: list[User],
    cursors: list[int],
    *,
    max_held: int,
    conns_per_user: int,
    poll_timeout: float,
    redis: Redis,
    keys: Keys,
    open_batch: int = OPEN_BATCH,
) -> HeldResult:
    """The steps up to max_held, then the first step again once all was released.

    CPython rarely gives freed memory back to the kernel, so RSS after the release says
    little; holding again shows whether that memory is reused (no leak) or grows.
    """
    result = HeldResult(conns_per_user, poll_timeout)

    def new_holder() -> Holder:
        return Holder(
            gateway, users, cursors, conns_per_user, poll_timeout, redis, keys, open_batch
        )

    result.idle_rss_kib = gateway.rss_kib()
    first = new_holder()
    result.steps = await hold_steps(first, held_steps(max_held), result.errors)
    result.returned_early = first.returned_early
    result.rss_after_release_kib = gateway.rss_kib()
    if result.errors:
        return result
    channels = [keys.channel(u.id) for u in users]

    async def unsubscribed() -> bool:
        return await subscribed_channels(redis, channels) == 0

    await wait_for("the gateway to unsubscribe the released users", unsubscribed, RELEASE_DEADLINE)
    result.rss_after_release_kib = gateway.rss_kib()  # again, now the users are gone too
    again = new_holder()
    result.rehold = await hold_steps(again, held_steps(max_held)[:1], result.errors)
    result.returned_early += again.returned_early
    return result
