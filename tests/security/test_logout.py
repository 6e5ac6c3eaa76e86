"""A logged-out token is dead everywhere: both gateways, the REST API and every event
transport, however it is presented (header, cookie, ?token=)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import aiohttp
import pytest
from yarl import URL

from longtail.wire import Keys
from tests.client import Client, messages
from tests.security.transports import TRANSPORTS, open_status
from tests.streams import count, read_stream, read_ws
from tests.waiting import eventually

REST = [
    ("GET", "/api/me", None),
    ("GET", "/api/friends", None),
    ("GET", "/api/conversations", None),
    ("POST", "/api/friends", {"username": "nobody-at-all"}),
    ("POST", "/api/messages", {"to": 1, "body": "ghost", "client_id": "ghost-1"}),
    ("POST", "/api/logout", {}),
]


def ways(transport: str) -> list[str]:
    _, query = TRANSPORTS[transport]
    return ["bearer", "cookie", "query"] if query else ["bearer", "cookie"]


async def logged_out(client: Client) -> str:
    """Log `client` out and return the token it had."""
    token = client.token
    assert token is not None
    assert (await client.request("POST", "/api/logout", {})).status == 200
    return token


async def test_a_logged_out_token_is_refused_by_the_rest_api_on_every_gateway(pair, stack):
    alice, bob = pair
    await logged_out(alice)
    for url in stack.urls:
        for method, path, body in REST:
            resp = await alice.request(method, path, body, base=url)
            assert (resp.status, resp.error_code) == (401, "unauthorized"), (url, path)
    # ...and nothing it tried reached anyone.
    assert messages(await bob.poll(timeout=0)) == []


async def test_a_logged_out_token_is_refused_by_every_transport(pair, stack, http):
    alice, _ = pair
    ways_in = [(t, how) for t in TRANSPORTS for how in ways(t)]
    # Alive before the logout, so that the refusal after it means something.
    before = {w: await open_status(http, stack.urls[1], *w, alice.token) for w in ways_in}
    assert {w: s for w, s in before.items() if s not in (200, 101)} == {}
    token = await logged_out(alice)
    after = {
        (url, *w): await open_status(http, url, *w, token) for url in stack.urls for w in ways_in
    }
    assert {w: s for w, s in after.items() if s != 401} == {}


async def refused_after_the_logout_is_heard(client: Client, stack, gateway: int) -> None:
    """Log `client` out (through its own gateway), wait until gateway `gateway` heard it,
    then every REST call there with the old token is a 401."""
    hub = stack.gateways[gateway].hub
    heard = hub.revocations
    await logged_out(client)
    await eventually(lambda: hub.revocations > heard, what=f"gateway {gateway} heard it")
    for method, path, body in REST:
        resp = await client.request(method, path, body, base=stack.urls[gateway])
        assert (resp.status, resp.error_code) == (401, "unauthorized"), path


async def test_a_gateway_that_kept_the_session_in_process_refuses_it_after_the_logout(pair, stack):
    """Interval polls on gateway 1 keep alice's channel heard there, so from the second
    on her session comes from that gateway's own cache; a logout made through gateway 0
    reaches it on her channel."""
    alice, _ = pair
    cached_on = stack.gateways[1]
    alice.cursor = (await alice.request("GET", "/api/events")).body["cursor"]
    for _ in range(3):
        await alice.poll(base=stack.urls[1], timeout=0)
    assert cached_on.services.auth.sessions.hits >= 1
    await refused_after_the_logout_is_heard(alice, stack, 1)
    assert (
        await alice.request(
            "GET", f"/api/events?cursor={alice.cursor}&timeout=0", base=stack.urls[1]
        )
    ).status == 401


async def test_a_gateway_the_user_only_sent_through_refuses_the_session_after_the_logout(
    pair, stack
):
    """Gateway 1 holds nothing of alice's (no channel of hers is heard there), yet it
    kept her session after her first send; the logout reaches it on the revocations
    channel."""
    alice, bob = pair
    sent_on = stack.gateways[1]
    for n in range(3):
        assert (await alice.send(bob, f"hi {n}", base=stack.urls[1])).status == 201
    assert sent_on.hub.channel(alice.user_id) is None
    assert sent_on.services.auth.sessions.hits >= 2
    await refused_after_the_logout_is_heard(alice, stack, 1)


async def test_the_gateway_that_made_the_logout_refuses_the_session_before_any_announcement(
    pair, stack
):
    alice, _ = pair
    gateway = stack.gateways[0]
    assert (await alice.request("GET", "/api/me")).status == 200
    assert (await alice.request("GET", "/api/me")).status == 200
    assert gateway.services.auth.sessions.hits >= 1
    gateway.hub.on_revoked = None  # as if the announcement were still on its way
    await logged_out(alice)
    assert (await alice.request("GET", "/api/me")).status == 401


async def test_logout_removes_the_cached_session_and_spares_the_users_other_sessions(
    new_client, stack, redis_factory, settings
):
    phone = await new_client(0).signup(f"dana{uuid.uuid4().hex[:6]}")
    laptop = Client(phone.http, stack.urls[1])
    login = await laptop.request(
        "POST", "/api/login", {"username": phone.username, "password": "correct horse"}
    )
    laptop.token = login.body["token"]
    redis = redis_factory()
    key = Keys(settings.redis_prefix).session(hashlib.sha256(phone.token.encode()).hexdigest())
    assert await redis.exists(key)
    await logged_out(phone)
    assert not await redis.exists(key)
    assert (await phone.request("GET", "/api/me", base=stack.urls[1])).status == 401
    for url in stack.urls:
        me = await laptop.request("GET", "/api/me", base=url)
        assert me.status == 200 and me.body["username"] == phone.username


async def test_a_logout_clears_the_cookie(stack, http):
    username = f"erin{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        tab = Client(browser, stack.urls[0])
        await tab.request("POST", "/api/register", {"username": username, "password": "password12"})
        await tab.request("POST", "/api/login", {"username": username, "password": "password12"})
        token = browser.cookie_jar.filter_cookies(URL(stack.urls[0]))["longtail_session"].value
        out = await tab.request("POST", "/api/logout", {})
        assert out.status == 200
        assert "longtail_session=" in out.headers["Set-Cookie"]
        assert "longtail_session" not in browser.cookie_jar.filter_cookies(URL(stack.urls[0]))
    # Replaying the old cookie by hand (a copy taken before the logout) is refused.
    async with http.get(
        stack.urls[1] + "/api/me", headers={"Cookie": f"longtail_session={token}"}
    ) as resp:
        assert resp.status == 401


HELD = ["sse", "ws", "longpoll"]


@pytest.mark.parametrize("transport", HELD)
async def test_a_connection_held_across_logout_delivers_nothing_new(transport, pair, stack, http):
    """A stream or poll opened before the logout must not carry what is sent after it."""
    alice, bob = pair
    bob.cursor = 2
    url = stack.urls[1]
    if transport == "ws":
        ws_url = url.replace("http", "ws", 1) + f"/api/events/ws?cursor={bob.cursor}"
        async with http.ws_connect(ws_url, headers={**bob.headers(), "Origin": url}) as ws:
            await read_ws(ws, lambda got: bool(got.controls))  # ready
            await logged_out(bob)
            await alice.send(bob, "after logout")
            got = await read_ws(ws, count(1), deadline=3)
        events = got.events
    elif transport == "sse":
        reader = asyncio.create_task(
            read_stream(
                http,
                url + f"/api/events/stream?cursor={bob.cursor}",
                bob.headers(),
                "sse",
                count(1),
                deadline=3,
            )
        )
        await eventually(lambda: bob.user_id in stack.gateways[1].hub.local_users())
        await logged_out(bob)
        await alice.send(bob, "after logout")
        events = (await reader).events
    else:
        poll = f"/api/events?cursor={bob.cursor}&timeout=3"
        waiting = asyncio.create_task(bob.request("GET", poll, base=url))
        await eventually(lambda: bob.user_id in stack.gateways[1].hub.local_users())
        await logged_out(bob)
        await alice.send(bob, "after logout")
        answer = await waiting
        events = answer.body["events"] if answer.status == 200 else []
    assert "after logout" not in messages(events)
