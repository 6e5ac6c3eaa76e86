"""The delivery core as ops run it: chatcore and three gateway processes, no stickiness."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import pytest

from tests.client import Client, messages
from tests.e2e.cluster import Cluster
from tests.streams import count, read_stream, read_ws

pytestmark = pytest.mark.e2e


def uname(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def pair(http, cluster: Cluster) -> tuple[Client, Client]:
    alice = await Client(http, cluster.urls[0]).signup(uname("alice"))
    bob = await Client(http, cluster.urls[1]).signup(uname("bob"))
    await alice.befriend(bob)
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    alice.cursor = (await alice.request("GET", "/api/events")).body["cursor"]
    return alice, bob


async def test_user_waiting_on_gateway_2_gets_a_message_sent_through_gateway_1_at_once(pair):
    alice, bob = pair
    waiting = asyncio.create_task(bob.poll(timeout=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    assert (await alice.send(bob, "across processes")).status == 201
    events = await asyncio.wait_for(waiting, 5)
    assert messages(events) == ["across processes"]
    assert loop.time() - sent_at < 1.0, "delivered by pub/sub, not by the poll timeout"


async def test_hundred_messages_sent_and_polled_through_alternating_gateways(pair, cluster):
    alice, bob = pair
    start = bob.cursor
    for i in range(100):
        assert (await alice.send(bob, f"n{i}", base=cluster.urls[i % 3])).status == 201
    events = await bob.poll_until(100, bases=list(reversed(cluster.urls)))
    assert messages(events) == [f"n{i}" for i in range(100)]
    assert [e["seq"] for e in events] == list(range(start + 1, start + 101))


async def test_sse_and_websocket_replay_from_an_old_cursor(pair, cluster, http):
    alice, bob = pair
    old = bob.cursor
    for i in range(5):
        await alice.send(bob, f"r{i}", base=cluster.urls[i % 3])
    url = cluster.urls[2] + f"/api/events/stream?cursor={old}"
    got = await read_stream(http, url, bob.headers(), "sse", count(5))
    assert messages(got.events) == [f"r{i}" for i in range(5)]
    ws_url = cluster.urls[1].replace("http", "ws") + f"/api/events/ws?cursor={old + 2}"
    async with http.ws_connect(ws_url, headers={**bob.headers(), "Origin": cluster.urls[1]}) as ws:
        frames = await read_ws(ws, count(3))
    assert messages(frames.events) == ["r2", "r3", "r4"]


async def test_gateway_killed_while_user_waits_user_resumes_elsewhere_nothing_lost(pair, cluster):
    alice, bob = pair
    victim = cluster.gateways[1]
    waiting = asyncio.create_task(bob.poll(base=victim.url, timeout=20))
    await asyncio.sleep(0.3)
    victim.kill(signal.SIGKILL)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(waiting, 5)
    try:
        for i in range(10):
            assert (await alice.send(bob, f"k{i}", base=cluster.urls[i % 2 * 2])).status == 201
        # The load balancer sends bob's retry elsewhere; his cursor is all he needs.
        events = await bob.poll_until(10, bases=[cluster.urls[2], cluster.urls[0]])
        assert messages(events) == [f"k{i}" for i in range(10)]
        assert len(bob.seen) == len(set(bob.seen))
    finally:
        await cluster.restart(victim)


async def test_retried_send_through_another_gateway_is_delivered_once(pair, cluster):
    alice, bob = pair
    first = await alice.send(bob, "retry me", client_id="e2e-retry", base=cluster.urls[0])
    retry = await alice.send(bob, "retry me", client_id="e2e-retry", base=cluster.urls[2])
    assert (first.status, retry.status) == (201, 200)
    await alice.send(bob, "after", base=cluster.urls[1])
    events = await bob.poll_until(2, bases=cluster.urls)
    assert messages(events) == ["retry me", "after"]


async def test_bad_inputs_get_their_4xx_from_every_gateway(pair, cluster, http):
    alice, bob = pair
    anonymous = Client(http, cluster.urls[0])
    cases = [
        (alice, "POST", "/api/messages", b"{oops", 400, "invalid_json"),
        (alice, "POST", "/api/messages", b'{"to": 1}', 400, "missing_field"),
        (
            alice,
            "POST",
            "/api/messages",
            b'{"to": [], "body": "x", "client_id": "a"}',
            400,
            "invalid_field",
        ),
        (alice, "POST", "/api/messages", b"x" * 100_000, 413, "body_too_large"),
        (alice, "GET", "/api/events?cursor=banana", None, 400, "invalid_cursor"),
        (alice, "GET", "/api/events?cursor=123456789", None, 400, "cursor_ahead"),
        (anonymous, "GET", "/api/events?cursor=0", None, 401, "unauthorized"),
        (
            Client(http, cluster.urls[0], token="forged"),
            "GET",
            "/api/me",
            None,
            401,
            "unauthorized",
        ),
    ]
    for i, (client, method, path, raw, status, code) in enumerate(cases):
        resp = await client.request(method, path, raw=raw, base=cluster.urls[i % 3], timeout=5)
        assert (resp.status, resp.error_code) == (status, code), (path, resp)
    stranger = await Client(http, cluster.urls[2]).signup(uname("stranger"))
    resp = await alice.send(stranger, "hi")
    assert (resp.status, resp.error_code) == (403, "not_friend")
    resp = await alice.send(bob, "y" * 4001)
    assert (resp.status, resp.error_code) == (413, "message_too_long")


async def test_chatcore_restart_loses_nothing(pair, cluster):
    alice, bob = pair
    await alice.send(bob, "before")
    cluster.chatcore.kill(signal.SIGKILL)
    down = await alice.send(bob, "while down")
    assert down.status == 503 and down.error_code == "chatcore_unavailable"
    await cluster.restart(cluster.chatcore)
    # What a client does with a 503: retry with the same client_id.
    assert (await alice.send(bob, "while down", client_id="down-1")).status == 201
    assert (await alice.send(bob, "while down", client_id="down-1")).status == 200
    events = await bob.poll_until(2, bases=cluster.urls)
    assert messages(events) == ["before", "while down"]


async def test_interval_polling_and_piggyback_across_gateways(pair, cluster):
    alice, bob = pair
    for i in range(4):
        await alice.send(bob, f"ip{i}", base=cluster.urls[i % 3])
    # Interval polling: timeout=0 answers at once, each poll on the next gateway.
    got = []
    for url in cluster.urls:
        resp = await bob.request(
            "GET", f"/api/events?cursor={bob.cursor}&timeout=0", base=url, timeout=2
        )
        got += resp.body["events"][:1]
        bob.cursor = got[-1]["seq"] if got else bob.cursor
    assert messages(got) == ["ip0", "ip1", "ip2"]
    # Piggyback: the last one rides on an ordinary API answer from yet another gateway.
    resp = await bob.request(
        "GET",
        "/api/conversations",
        base=cluster.urls[0],
        headers={"X-Longtail-Cursor": str(bob.cursor)},
    )
    assert messages(resp.body["piggyback"]["events"]) == ["ip3"]
    assert resp.body["conversations"][0]["last_message"]["body"] == "ip3"
