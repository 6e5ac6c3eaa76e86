"""Delivery across two in-process gateways: long-poll, SSE and WebSocket on one cursor."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.client import Client, messages
from tests.streams import count, read_stream, read_ws


async def test_waiting_long_poll_on_other_gateway_completes_when_message_sent(pair):
    alice, bob = pair
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    waiting = asyncio.create_task(bob.poll(timeout=10))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "the long-poll must wait while there is nothing new"
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await alice.send(bob, "hi bob")).status == 201
    events = await asyncio.wait_for(waiting, 5)
    assert messages(events) == ["hi bob"]
    assert loop.time() - started < 2


async def test_hundred_messages_alternating_gateways_arrive_once_in_order(pair, stack):
    alice, bob = pair
    start = (await bob.request("GET", "/api/events")).body["cursor"]
    bob.cursor = start
    for i in range(100):
        resp = await alice.send(bob, f"m{i}", base=stack.urls[i % 2])
        assert resp.status == 201
    events = await bob.poll_until(100, bases=stack.urls)
    assert messages(events) == [f"m{i}" for i in range(100)]
    assert [e["seq"] for e in events] == list(range(start + 1, start + 101))


async def test_interval_poll_with_timeout_zero_answers_at_once(pair):
    _alice, bob = pair
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await bob.request("GET", f"/api/events?cursor={bob.cursor}&timeout=0")
    assert resp.status == 200 and loop.time() - started < 1
    assert [e["type"] for e in resp.body["events"]] == ["friend_request", "friend_accepted"]


async def test_retried_send_is_stored_and_delivered_once(pair):
    alice, bob = pair
    first = await alice.send(bob, "only once", client_id="retry-1")
    second = await alice.send(bob, "only once", client_id="retry-1")
    assert first.status == 201 and second.status == 200
    assert first.body["message"]["id"] == second.body["message"]["id"]
    events = await bob.poll(timeout=0)
    assert messages(events) == ["only once"]
    reused = await alice.send(bob, "something else", client_id="retry-1")
    assert reused.status == 409 and reused.error_code == "client_id_reused"


async def test_sender_other_tabs_get_their_own_message(pair, stack):
    alice, bob = pair
    await alice.send(bob, "from tab one")
    events = await alice.poll(timeout=0, base=stack.urls[1])
    assert messages(events) == ["from tab one"]


async def test_sse_replays_from_old_cursor_then_streams_live(pair, stack, http):
    alice, bob = pair
    for i in range(3):
        await alice.send(bob, f"old{i}")
    url = stack.urls[0] + "/api/events/stream?cursor=2"
    reader = asyncio.create_task(read_stream(http, url, bob.headers(), "sse", count(4)))
    await asyncio.sleep(0.3)
    await alice.send(bob, "live", base=stack.urls[1])
    got = await reader
    assert got.headers["Content-Type"].startswith("text/event-stream")
    assert got.headers["X-Accel-Buffering"] == "no"
    assert got.headers["Cache-Control"] == "no-store"
    assert got.ids == [3, 4, 5, 6] and got.kinds()[0] == "ready"
    assert messages(got.events) == ["old0", "old1", "old2", "live"]
    # Last-Event-ID resumes exactly after the last event seen, on the other gateway.
    resumed = await read_stream(
        http,
        stack.urls[1] + "/api/events/stream",
        {**bob.headers(), "Last-Event-ID": "4"},
        "sse",
        count(2),
    )
    assert resumed.ids == [5, 6]


async def test_websocket_replays_from_old_cursor_then_streams_live(pair, stack, http):
    alice, bob = pair
    for i in range(3):
        await alice.send(bob, f"old{i}")
    url = stack.urls[1].replace("http", "ws") + "/api/events/ws?cursor=2"
    async with http.ws_connect(url, headers={**bob.headers(), "Origin": stack.urls[1]}) as ws:
        got = await read_ws(ws, count(3))
        assert got.controls == [{"type": "ready", "cursor": 2}]
        await alice.send(bob, "live", base=stack.urls[0])
        got = await read_ws(ws, count(1))
        live = got.events
    assert [e["seq"] for e in live] == [6]
    assert messages(live) == ["live"]


async def test_websocket_from_another_site_is_refused(pair, stack, http):
    _, bob = pair
    url = stack.urls[0].replace("http", "ws") + "/api/events/ws?cursor=0"
    try:
        async with http.ws_connect(
            url, headers={**bob.headers(), "Origin": "https://evil.example"}
        ):
            raise AssertionError("a cross-site WebSocket must not open")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 403


async def test_websocket_with_cursor_ahead_closes_with_reason(pair, stack, http):
    _, bob = pair
    url = stack.urls[0].replace("http", "ws") + "/api/events/ws?cursor=999"
    async with http.ws_connect(url, headers={**bob.headers(), "Origin": stack.urls[0]}) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4400 and msg.extra == "cursor_ahead"


async def test_events_are_private_to_their_user(pair, new_client):
    alice, bob = pair
    carol: Client = await new_client(0).signup("carol_private")
    await alice.send(bob, "for bob only")
    events = await carol.poll(timeout=0)
    assert events == []
