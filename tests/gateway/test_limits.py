"""Abuse limits: rates shared by every gateway, connection caps, a full gateway's 503."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.limits import MOST_LEASED, ConnectionLimits, Rate, RateLimiter
from longtail.errors import ApiError
from longtail.wire import Keys
from tests.client import Client
from tests.waiting import eventually


@pytest.fixture
def tight(stack):
    """Small limits on both gateways, so a test can reach them."""
    for gateway in stack.gateways:
        gateway.services.settings = gateway.services.settings.with_(
            sends_per_minute=5, friend_requests_per_hour=3, logins_per_15min=4
        )
        gateway.services.connections.per_user = 2
        gateway.services.connections.per_ip = 3
    return stack


async def test_send_rate_is_one_limit_across_all_gateways(pair, tight):
    alice, bob = pair
    answers = [await alice.send(bob, f"n{i}", base=tight.urls[i % 2]) for i in range(7)]
    assert [a.status for a in answers] == [201] * 5 + [429] * 2
    refused = answers[-1]
    assert refused.error_code == "rate_limited" and 1 <= int(refused.headers["Retry-After"]) <= 60
    events = await bob.poll(timeout=0)
    assert [e["message"]["body"] for e in events if e["type"] == "message"] == [
        f"n{i}" for i in range(5)
    ]


@pytest.fixture
async def limiters(redis_factory, redis_prefix) -> AsyncIterator[list[RateLimiter]]:
    """Two gateways' rate limiters on one Redis."""
    made = [RateLimiter(redis_factory(), Keys(redis_prefix)) for _ in range(2)]
    yield made
    for limiter in made:
        await limiter.aclose()


async def counted(redis_factory, redis_prefix, subject: str = "7") -> int:
    """The uses Redis has counted for `subject`'s sends, leases included."""
    value = await redis_factory().get(Keys(redis_prefix).rate("sends", subject))
    return int(value or 0)


async def test_no_mix_of_gateways_lets_a_subject_past_its_limit(limiters):
    rate, mix = Rate("sends", 200, 60), random.Random(5)
    allowed = 0
    for _ in range(150):
        got, refusal = await mix.choice(limiters).take(rate, "7", mix.randint(1, 3))
        allowed += got
    # Leases left unspent on either gateway are the only uses short of the limit.
    assert 200 - 2 * 200 // 8 <= allowed <= 200
    assert refusal is not None and refusal.code == "rate_limited"


async def test_a_client_that_moves_gateway_is_refused_at_most_an_eighth_early(limiters):
    first, second = limiters
    rate = Rate("sends", 80, 60)
    assert await first.take(rate, "7", 1) == (1, None)  # and a lease, unspent
    allowed = 0
    for _ in range(100):
        allowed += (await second.take(rate, "7", 1))[0]
    assert 80 - 1 - 80 // 8 <= allowed <= 80 - 1


async def test_far_from_its_limit_a_sender_asks_redis_once_per_lease(
    limiters, redis_factory, redis_prefix
):
    limiter, rate = limiters[0], Rate("sends", 100_000, 60)
    await limiter.take(rate, "7", 1)
    assert await counted(redis_factory, redis_prefix) == 1 + MOST_LEASED
    for _ in range(MOST_LEASED):
        assert await limiter.take(rate, "7", 1) == (1, None)
    assert await counted(redis_factory, redis_prefix) == 1 + MOST_LEASED
    await limiter.take(rate, "7", 1)
    assert await counted(redis_factory, redis_prefix) == 2 * (1 + MOST_LEASED)


async def test_one_gateway_gives_exactly_the_limit(limiters, redis_factory, redis_prefix):
    limiter, rate = limiters[0], Rate("sends", 16, 60)
    outcomes = [await limiter.take(rate, "7", 1) for _ in range(20)]
    assert [got for got, _ in outcomes] == [1] * 16 + [0] * 4
    assert all(refusal is None for _, refusal in outcomes[:16])
    assert 1 <= int(outcomes[-1][1].headers["Retry-After"]) <= 60
    # Past half the limit nothing is leased: Redis counted each use as it came.
    assert await counted(redis_factory, redis_prefix) == 20


async def test_a_lease_ends_with_its_window(limiters, redis_factory, redis_prefix):
    limiter, rate = limiters[0], Rate("sends", 100_000, 1)
    await limiter.take(rate, "7", 1)
    assert await counted(redis_factory, redis_prefix) == 1 + MOST_LEASED

    async def window_ended() -> bool:
        return await counted(redis_factory, redis_prefix) == 0

    await eventually(window_ended, deadline=5, what="the one-second window to end")
    await limiter.take(rate, "7", 1)  # the rest of the old lease is not spent
    assert await counted(redis_factory, redis_prefix) == 1 + MOST_LEASED


async def test_friend_requests_are_limited(new_client, tight):
    asker = await new_client(0).signup(f"asker{uuid.uuid4().hex[:6]}")
    others = [await new_client(1).signup(f"o{i}{uuid.uuid4().hex[:6]}") for i in range(4)]
    statuses = [
        (await asker.request("POST", "/api/friends", {"username": o.username})).status
        for o in others
    ]
    assert statuses == [201, 201, 201, 429]


async def test_password_guessing_is_throttled_per_account(new_client, tight):
    victim = await new_client(0).signup(f"victim{uuid.uuid4().hex[:6]}")
    guesser = Client(victim.http, tight.urls[1])
    statuses = []
    for guess in range(6):
        resp = await guesser.request(
            "POST",
            "/api/login",
            {"username": victim.username.upper(), "password": f"guess{guess}xx"},
        )
        statuses.append(resp.status)
    assert statuses[:3] == [401, 401, 401] and statuses[-1] == 429
    # Even the right password waits: the account is throttled, not the guess.
    resp = await guesser.request(
        "POST", "/api/login", {"username": victim.username, "password": "correct horse"}
    )
    assert resp.status == 429 and "Retry-After" in resp.headers


async def test_held_connections_per_user_are_capped(pair, tight):
    _, bob = pair
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    url = tight.urls[0]
    held = [asyncio.create_task(bob.poll(base=url, timeout=5)) for _ in range(2)]
    gateway = tight.gateways[0]
    await eventually(lambda: gateway.services.connections.held == 2, what="two held")
    third = await bob.request("GET", f"/api/events?cursor={bob.cursor}&timeout=5", base=url)
    assert third.status == 429 and third.error_code == "too_many_connections"
    stream = await bob.request("GET", f"/api/events/stream?cursor={bob.cursor}", base=url)
    assert stream.status == 429
    # The other gateway has its own count.
    elsewhere = await bob.request(
        "GET", f"/api/events?cursor={bob.cursor}&timeout=0", base=tight.urls[1]
    )
    assert elsewhere.status == 200
    gateway.hub.close_all("draining")
    await asyncio.gather(*held)
    assert gateway.services.connections.held == 0


async def test_a_full_gateway_answers_503_with_retry_after(pair, tight):
    _, bob = pair
    gateway = tight.gateways[1]
    gateway.services.connections.total = 0
    try:
        resp = await bob.request(
            "GET", f"/api/events?cursor={bob.cursor}&timeout=1", base=tight.urls[1]
        )
    finally:
        gateway.services.connections.total = 18000
    assert resp.status == 503 and resp.error_code == "gateway_full"
    assert resp.headers["Retry-After"] == "2"
    assert (await bob.request("GET", "/api/me", base=tight.urls[1])).status == 200


def test_a_gateway_that_lost_redis_sends_new_held_requests_elsewhere() -> None:
    limits = ConnectionLimits(per_user=5, per_ip=5, total=10)
    limits.redis_lost = True
    with pytest.raises(ApiError) as refused:
        limits.acquire(1, "10.0.0.1")
    assert (refused.value.status, refused.value.code) == (503, "redis_unavailable")
    assert refused.value.headers == {"Retry-After": "1"}
    assert limits.held == 0
    limits.redis_lost = False
    limits.acquire(1, "10.0.0.1")
    assert limits.held == 1


def test_connection_limits_acquire_and_release_in_pairs() -> None:
    limits = ConnectionLimits(per_user=1, per_ip=5, total=5)
    limits.acquire(1, "a")
    with pytest.raises(ApiError) as refused:
        limits.acquire(1, "a")
    assert refused.value.status == 429
    assert limits.held == 1
    limits.release(1, "a")
    assert limits.held == 0
    limits.acquire(1, "a")  # the slot is free again
