"""Held SSE streams take the lean path (gateway.transports.lean_stream): EventStream's
contract, no task while idle, and every way out deregisters the stream."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.waiting import eventually


async def lines_until(resp: aiohttp.ClientResponse, marker: bytes) -> bytes:
    seen = b""
    async with asyncio.timeout(10):
        while marker not in seen:
            seen += await resp.content.readany()
    return seen


async def test_an_idle_stream_holds_no_task_and_wakes_for_an_event(pair, stack, http):
    alice, bob = pair
    url = stack.urls[1] + f"/api/events/stream?cursor={bob.cursor + 2}"
    headers = bob.headers({"X-Request-ID": "sse-1"})
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["X-Request-ID"] == "sse-1"
        assert resp.headers["Cache-Control"] == "no-store"
        prelude = await lines_until(resp, b"event: ready")
        assert prelude.startswith(b"retry: 1000\n")
        await eventually(lambda: stack.gateways[1].hub.connection_count() == 1)
        names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
        assert not [n for n in names if "HeldEventStream" in n or "HeldPoll" in n], names
        assert (await alice.send(bob, "wake up")).status == 201
        body = await lines_until(resp, b"wake up")
    assert b"id: %d\n" % (bob.cursor + 3) in body


async def test_a_client_that_leaves_a_stream_is_deregistered(pair, stack, http):
    _, bob = pair
    gateway = stack.gateways[0]
    services = gateway.services
    url = stack.urls[0] + f"/api/events/stream?cursor={bob.cursor + 2}"
    async with http.get(url, headers=bob.headers()) as resp:
        await lines_until(resp, b"event: ready")
        await eventually(lambda: services.connections.held == 1)
    await eventually(lambda: services.connections.held == 0)
    assert gateway.hub.connection_count() == 0
    assert services.metrics.held.labels("sse")._value.get() == 0


async def test_errors_before_the_stream_are_json(pair, stack, http):
    _, bob = pair
    async with http.get(stack.urls[0] + "/api/events/stream?cursor=0") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"
    url = stack.urls[0] + f"/api/events/stream?cursor={bob.cursor + 50}"
    async with http.get(url, headers=bob.headers()) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "cursor_ahead"
    headers = bob.headers({"Last-Event-ID": "nope"})
    async with http.get(stack.urls[0] + "/api/events/stream", headers=headers) as resp:
        assert resp.status == 400


async def test_last_event_id_resumes_and_no_cursor_starts_at_the_current_one(pair, stack, http):
    alice, bob = pair
    assert (await alice.send(bob, "before")).status == 201
    headers = bob.headers({"Last-Event-ID": str(bob.cursor + 2)})
    async with http.get(stack.urls[1] + "/api/events/stream", headers=headers) as resp:
        assert b"before" in await lines_until(resp, b"before")
    async with http.get(stack.urls[1] + "/api/events/stream", headers=bob.headers()) as resp:
        prelude = await lines_until(resp, b"event: ready")
        assert b'"cursor":%d' % (bob.cursor + 3) in prelude
        assert (await alice.send(bob, "after")).status == 201
        body = await lines_until(resp, b"after")
    assert b"before" not in body
