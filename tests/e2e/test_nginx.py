"""The three gateways behind a real nginx running deploy/nginx.conf, round-robin."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.client import Client, messages
from tests.e2e.nginx import Nginx
from tests.streams import count, read_stream, read_ws

pytestmark = pytest.mark.e2e


@pytest.fixture
async def pair(http, nginx: Nginx) -> tuple[Client, Client]:
    alice = await Client(http, nginx.url).signup(f"alice{uuid.uuid4().hex[:6]}")
    bob = await Client(http, nginx.url).signup(f"bob{uuid.uuid4().hex[:6]}")
    await alice.befriend(bob)
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    return alice, bob


async def test_the_config_is_valid(nginx: Nginx):
    result = nginx.check()
    assert result.returncode == 0 and "syntax is ok" in result.stderr


async def test_messages_through_the_load_balancer_arrive_once_in_order(pair):
    alice, bob = pair
    start = bob.cursor
    for i in range(60):
        assert (await alice.send(bob, f"lb{i}")).status == 201
    events = await bob.poll_until(60)
    assert messages(events) == [f"lb{i}" for i in range(60)]
    assert [e["seq"] for e in events] == list(range(start + 1, start + 61))


async def test_a_held_long_poll_is_completed_through_nginx_at_once(pair):
    alice, bob = pair
    waiting = asyncio.create_task(bob.poll(timeout=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await alice.send(bob, "through nginx")
    assert messages(await asyncio.wait_for(waiting, 5)) == ["through nginx"]
    assert loop.time() - sent < 1.0


async def test_sse_is_not_buffered_by_nginx(pair, nginx, http):
    alice, bob = pair
    url = nginx.url + f"/api/events/stream?cursor={bob.cursor}"
    ready = await read_stream(http, url, bob.headers(), "sse", lambda got: bool(got.controls))
    assert ready.kinds() == ["ready"], "the stream's first bytes arrive before any event"
    reader = asyncio.create_task(read_stream(http, url, bob.headers(), "sse", count(1)))
    await asyncio.sleep(0.3)
    await alice.send(bob, "live via sse")
    assert messages((await asyncio.wait_for(reader, 5)).events) == ["live via sse"]


async def test_websocket_upgrade_passes_through(pair, nginx, http):
    alice, bob = pair
    url = nginx.url.replace("http", "ws") + f"/api/events/ws?cursor={bob.cursor}"
    async with http.ws_connect(url, headers={**bob.headers(), "Origin": nginx.url}) as ws:
        assert (await read_ws(ws, lambda got: bool(got.controls))).kinds() == ["ready"]
        await alice.send(bob, "live via ws")
        got = await read_ws(ws, count(1))
    assert messages(got.events) == ["live via ws"]


async def test_chatcores_internal_api_is_not_exposed(http, nginx):
    async with http.get(nginx.url + "/internal/health") as resp:
        assert resp.status == 404


async def test_oversized_body_gets_the_gateways_json_413(pair):
    alice, _ = pair
    resp = await alice.request("POST", "/api/messages", raw=b"z" * 300_000)
    assert (resp.status, resp.error_code) == (413, "body_too_large")
