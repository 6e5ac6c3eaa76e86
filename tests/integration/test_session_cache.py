"""The gateway's own session cache never outlives a logout it could have missed.

A gateway keeps a verified session in the process only while it hears the revocations
channel, where chatcore announces every logout. These tests play chatcore's part on the
wire (the session key, then `x:<hash>` on the user's channel and on the revocations
channel) against a hub whose subscriber runs through a proxy the test can cut: a
fakeredis TCP server by default, the real Redis when LONGTAIL_TEST_REDIS_URL is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.app import subscriber_options
from gateway.auth import Authenticator
from gateway.hub import Hub
from gateway.mailbox import Mailbox
from gateway.session_cache import SessionCache
from gateway.shards import SingleShard
from longtail.errors import ApiError
from longtail.wire import Keys, revoked_message
from tests.proxy import FaultyProxy
from tests.waiting import eventually

TOKEN = "a-token-for-the-tests"
SESSION = hashlib.sha256(TOKEN.encode()).hexdigest()


class RefusingChatcore:
    """chatcore's verdict on a session missing from Redis: logged out."""

    def __init__(self) -> None:
        self.asked = 0

    async def call(self, method: str, path: str, body: object = None) -> object:
        assert (method, path) == ("POST", "/internal/sessions/verify")
        self.asked += 1
        raise ApiError(401, "unauthorized", "The session is invalid or has expired.")


@pytest.fixture
async def rig(redis_target, redis_prefix):
    host, port = redis_target
    proxy = await FaultyProxy(host, port).start()
    keys = Keys(redis_prefix)
    direct = Redis(host=host, port=port)
    subscriber = Redis.from_url(proxy.url, **subscriber_options())
    hub = Hub(SingleShard(subscriber), keys, unsubscribe_grace=0.1, ping_interval=0.2)
    await hub.start()
    assert await hub.wait_healthy(5)
    # Healthy means the subscription was sent; the cache needs it confirmed, or the
    # first lookup (a test's sender) is not kept, rightly, and the test would flake.
    await eventually(
        lambda: hub.revocations_channel.listening, deadline=5, what="revocations confirmed"
    )
    chatcore = RefusingChatcore()
    cache = SessionCache(hub)
    auth = Authenticator(direct, keys, chatcore, cache)  # type: ignore[arg-type]
    await direct.set(keys.session(SESSION), json.dumps({"id": 1, "username": "ann"}), ex=3600)
    yield proxy, hub, direct, keys, auth, chatcore
    await hub.stop()
    await subscriber.aclose()
    await proxy.stop()
    await direct.delete(keys.session(SESSION))
    await direct.aclose()


async def log_out(direct: Redis, keys: Keys) -> None:
    """What chatcore.sessions.Sessions.revoke does on the wire."""
    await direct.delete(keys.session(SESSION))
    await direct.spublish(keys.channel(1), revoked_message(SESSION))
    await direct.spublish(keys.revocations(), revoked_message(SESSION))


async def reconnected(proxy: FaultyProxy, hub: Hub) -> None:
    """The subscriber's connection is cut; the hub reconnects and re-subscribes."""
    reconnects = hub.reconnects
    proxy.cut()
    await eventually(
        lambda: hub.reconnects > reconnects and hub.healthy, deadline=10, what="reconnected"
    )


async def refused(auth: Authenticator) -> bool:
    try:
        await auth.user(TOKEN)
    except ApiError as exc:
        return exc.status == 401
    return False


async def test_requests_after_the_first_skip_redis_whether_or_not_the_user_is_held_here(
    rig,
):
    _, hub, direct, keys, auth, _ = rig
    assert (await auth.user(TOKEN)).id == 1  # a sender: no connection of user 1 here
    # The key is gone without an announcement: only the cache can answer now.
    await direct.delete(keys.session(SESSION))
    for _ in range(3):
        assert (await auth.user(TOKEN)).username == "ann"
    async with hub.listen(1, Mailbox(10)):
        assert (await auth.user(TOKEN)).username == "ann"
    assert auth.sessions.hits == 4


async def test_a_logout_heard_on_the_revocations_channel_ends_the_cached_session(rig):
    _, hub, direct, keys, auth, _ = rig
    await auth.user(TOKEN)
    await direct.delete(keys.session(SESSION))
    await direct.spublish(keys.revocations(), revoked_message(SESSION))
    await eventually(lambda: hub.revocations == 1, what="the logout heard")
    assert await refused(auth)


async def test_a_logout_ends_the_session_and_its_connections_here(rig):
    _, hub, direct, keys, auth, _ = rig
    mailbox = Mailbox(10, SESSION)
    async with hub.listen(1, mailbox):
        user = await auth.user(TOKEN)
        assert user.session == SESSION
        await log_out(direct, keys)
        # Heard twice: on the user's channel (which closes the session's connections)
        # and on the revocations channel.
        await eventually(lambda: hub.revocations == 2, what="the logout heard")
        assert mailbox.closed == "logged_out"
        assert await refused(auth)


async def test_a_logout_announced_while_the_subscriber_was_down_still_counts(rig):
    proxy, hub, direct, keys, auth, _ = rig
    await auth.user(TOKEN)
    proxy.refuse = True
    proxy.cut()
    await eventually(lambda: not hub.healthy, what="the hub notices the cut")
    await log_out(direct, keys)  # nobody hears it
    assert hub.revocations == 0
    assert await refused(auth), "refused while the subscriber is down"
    proxy.refuse = False
    await eventually(lambda: hub.healthy, deadline=10, what="reconnected")
    assert await refused(auth), "refused after the subscriber is back"


async def test_a_lookup_is_kept_only_if_the_subscription_came_first_and_no_logout_crossed_it(
    rig,
):
    proxy, hub, direct, keys, auth, _ = rig
    cache = auth.sessions
    user = await auth.user(TOKEN)
    cache.forget(SESSION)
    before_subscribing = cache.mark()
    await reconnected(proxy, hub)
    cache.keep(user, before_subscribing, 60)
    assert cache.get(SESSION) is None, "the logout could have come before the SSUBSCRIBE"

    crossed = cache.mark()
    await direct.spublish(keys.revocations(), revoked_message("another session"))
    await eventually(lambda: hub.revocations == 1, what="a logout heard")
    cache.keep(user, crossed, 60)
    assert cache.get(SESSION) is None, "a logout heard during the lookup may be this one"

    cache.keep(user, cache.mark(), 60)
    assert cache.get(SESSION) == user


async def test_an_entry_ends_with_the_session_and_with_the_subscription(rig):
    proxy, hub, _, _, auth, _ = rig
    cache = auth.sessions
    user = await auth.user(TOKEN)
    cache.keep(user, cache.mark(), 0.05)  # the session expires in 50 ms
    assert cache.get(SESSION) == user
    await eventually(lambda: cache.get(SESSION) is None, deadline=2, what="expired")

    cache.keep(user, cache.mark(), 60)
    assert cache.get(SESSION) == user
    # A logout published while the connection was being replaced is lost to pub/sub.
    await reconnected(proxy, hub)
    assert cache.get(SESSION) is None


async def test_lookups_made_together_share_one_round_trip_and_each_gets_its_own_user(rig):
    _, _, direct, keys, auth, chatcore = rig
    tokens = [f"token-{n}" for n in range(8)]
    for n, token in enumerate(tokens):
        digest = hashlib.sha256(token.encode()).hexdigest()
        await direct.set(keys.session(digest), json.dumps({"id": 10 + n, "username": f"u{n}"}))
    pipelines = 0
    make_pipeline = direct.pipeline

    def counted(*args, **kwargs):
        nonlocal pipelines
        pipelines += 1
        return make_pipeline(*args, **kwargs)

    direct.pipeline = counted  # type: ignore[method-assign]
    try:
        # Among them a token Redis does not know: that one alone goes to chatcore.
        answers = await asyncio.gather(
            *(auth.user(token) for token in tokens[:4]),
            auth.user("a-token-nobody-has"),
            *(auth.user(token) for token in tokens[4:]),
            return_exceptions=True,
        )
    finally:
        direct.pipeline = make_pipeline  # type: ignore[method-assign]
        for token in tokens:
            await direct.delete(keys.session(hashlib.sha256(token.encode()).hexdigest()))
    refusal = answers.pop(4)
    assert isinstance(refusal, ApiError) and refusal.status == 401
    assert chatcore.asked == 1
    assert [(user.id, user.username) for user in answers] == [(10 + n, f"u{n}") for n in range(8)]
    assert pipelines == 1


async def test_lookups_fall_back_to_chatcore_when_redis_fails_them(rig):
    _, _, direct, _, auth, chatcore = rig

    def broken(*args, **kwargs):
        raise RedisConnectionError("Redis is down")

    make_pipeline = direct.pipeline
    direct.pipeline = broken  # type: ignore[method-assign]
    try:
        answers = await asyncio.gather(refused(auth), refused(auth))
    finally:
        direct.pipeline = make_pipeline  # type: ignore[method-assign]
    # chatcore decided, for each request: here, that the session is gone.
    assert answers == [True, True] and chatcore.asked == 2
