"""The few public API calls the bench needs, made the way a browser script makes them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import aiohttp

from bench.cluster import BenchError

PASSWORD = "bench-password"
CALL_TIMEOUT = aiohttp.ClientTimeout(total=30)
T = TypeVar("T")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def connector(limit: int = 0) -> aiohttp.TCPConnector:
    """limit=0: as many simultaneous connections as there are requests in flight."""
    return aiohttp.TCPConnector(limit=limit, limit_per_host=0)


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    expect: int = 200,
) -> Any:
    """One JSON request; anything but the expected status stops the bench."""
    async with http.request(method, url, json=body, headers=headers, timeout=CALL_TIMEOUT) as resp:
        text = await resp.text()
        if resp.status != expect:
            raise BenchError(f"{method} {url} -> {resp.status} (wanted {expect}): {text[:300]}")
        return json.loads(text) if text else None


async def create_user(http: aiohttp.ClientSession, base: str, username: str) -> User:
    credentials = {"username": username, "password": PASSWORD}
    await call(http, "POST", f"{base}/api/register", body=credentials, expect=201)
    session = await call(http, "POST", f"{base}/api/login", body=credentials)
    return User(int(session["id"]), username, session["token"])


async def create_users(
    http: aiohttp.ClientSession, base: str, prefix: str, count: int, concurrency: int = 32
) -> list[User]:
    """`count` registered, logged-in users named prefix0, prefix1, ..."""
    return await bounded_gather(
        [partial(create_user, http, base, f"{prefix}{i}") for i in range(count)], concurrency
    )


async def befriend(http: aiohttp.ClientSession, base: str, a: User, b: User) -> None:
    """a asks, b accepts (a request in the other direction is an acceptance)."""
    await call(
        http,
        "POST",
        f"{base}/api/friends",
        body={"username": b.username},
        headers=a.auth,
        expect=201,
    )
    await call(
        http,
        "POST",
        f"{base}/api/friends",
        body={"username": a.username},
        headers=b.auth,
        expect=201,
    )


async def current_cursor(http: aiohttp.ClientSession, base: str, user: User) -> int:
    """GET /api/events without a cursor answers at once with the user's newest seq."""
    answer = await call(http, "GET", f"{base}/api/events", headers=user.auth)
    return int(answer["cursor"])


async def bounded_gather(factories: list[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    """Run the calls with at most `concurrency` in flight, results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def run(factory: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await factory()

    return await asyncio.gather(*(run(f) for f in factories))
