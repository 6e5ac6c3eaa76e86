"""A session ends at its lifetime on every gateway and transport, cached or not: the Redis
cache entry lives exactly as long as the session has left, never longer."""

from __future__ import annotations

import hashlib
import time
import uuid
from email.utils import parsedate_to_datetime

import pytest

from longtail.settings import Settings
from longtail.wire import Keys
from tests.client import Client
from tests.security.transports import TRANSPORTS, open_status
from tests.waiting import eventually

TTL = 2  # seconds: long enough to log in and look, short enough to wait out


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Every stack of this module hands out sessions of TTL seconds."""
    return settings.with_(session_ttl=TTL)


def cache_key(settings: Settings, token: str) -> str:
    return Keys(settings.redis_prefix).session(hashlib.sha256(token.encode()).hexdigest())


async def signed_up(client: Client) -> tuple[Client, float]:
    """A fresh user, and a time by which their session surely ends (login's answer + TTL)."""
    await client.signup(f"fay{uuid.uuid4().hex[:6]}")
    return client, time.time() + TTL


async def refused_everywhere(client: Client, stack, http) -> None:
    for url in stack.urls:
        me = await client.request("GET", "/api/me", base=url)
        assert (me.status, me.error_code) == (401, "unauthorized"), url
        for transport, (_, query) in TRANSPORTS.items():
            how = "query" if query else "bearer"
            assert await open_status(http, url, transport, how, client.token) == 401, transport


async def test_an_expired_session_is_refused_on_every_gateway_and_transport(
    new_client, stack, http, redis_factory, settings
):
    client, ends_by = await signed_up(new_client(0))
    redis = redis_factory()
    key = cache_key(settings, client.token)
    # Cached at login for no longer than the session's whole life.
    assert 0 < await redis.pttl(key) <= TTL * 1000
    for url in stack.urls:
        assert (await client.request("GET", "/api/me", base=url)).status == 200
    # Nobody removes the cache entry: its own expiry ends the session on the gateways.
    await eventually(
        lambda: _unauthorized(client, stack.urls[1]), deadline=TTL + 3, what="session expired"
    )
    assert time.time() <= ends_by + 1, "the session outlived its lifetime"
    assert not await redis.exists(key)
    await refused_everywhere(client, stack, http)


async def test_a_session_recached_after_a_miss_expires_at_the_same_moment(
    new_client, stack, http, redis_factory, settings
):
    client, ends_by = await signed_up(new_client(1))
    redis = redis_factory()
    key = cache_key(settings, client.token)
    # A cache miss (evicted, Redis restarted): the gateway asks chatcore, which caches the
    # session again for what is left of its life (rounded down), not for a fresh TTL.
    await redis.delete(key)
    assert (await client.request("GET", "/api/me", base=stack.urls[0])).status == 200
    left_ms = await redis.pttl(key)
    assert 0 < left_ms <= (ends_by - time.time()) * 1000 < TTL * 1000
    await eventually(
        lambda: _unauthorized(client, stack.urls[0]), deadline=TTL + 3, what="session expired"
    )
    assert time.time() <= ends_by + 1
    await refused_everywhere(client, stack, http)


async def test_a_cookie_lives_no_longer_than_its_session(stack, new_client):
    client = new_client(0)
    username = f"gus{uuid.uuid4().hex[:6]}"
    await client.request("POST", "/api/register", {"username": username, "password": "password12"})
    login = await client.request(
        "POST", "/api/login", {"username": username, "password": "password12"}
    )
    cookie = login.headers["Set-Cookie"]
    assert "longtail_session=" in cookie and "expires=" in cookie.lower()
    expires = _cookie_expiry(cookie)
    assert expires <= time.time() + TTL + 1


async def _unauthorized(client: Client, base: str) -> bool:
    return (await client.request("GET", "/api/me", base=base)).status == 401


def _cookie_expiry(cookie: str) -> float:
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name.lower() == "expires":
            return parsedate_to_datetime(value).timestamp()
    raise AssertionError(f"no expires in {cookie!r}")
