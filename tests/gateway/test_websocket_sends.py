"""Sending on the WebSocket a client already holds: the same rules as POST /api/messages,
answers in the order sent, and the receiver gets every message once, in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from tests.client import Client, messages
from tests.waiting import eventually

DEADLINE = 10.0


@asynccontextmanager
async def socket(
    http: aiohttp.ClientSession, base: str, client: Client
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    url = base.replace("http", "ws") + "/api/events/ws"
    async with http.ws_connect(url, headers={**client.headers(), "Origin": base}) as ws:
        yield ws


async def answers(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` answers (sent, send_failed, error), skipping events and control."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE):
        while len(got) < count:
            frame = json.loads((await ws.receive()).data)
            if frame["type"] in ("sent", "send_failed", "error"):
                got.append(frame)
    return got


def send_frame(to: Client, body: str, client_id: str) -> str:
    return json.dumps({"type": "send", "to": to.user_id, "body": body, "client_id": client_id})


async def test_sends_on_a_websocket_are_answered_in_order_and_delivered_in_order(pair, stack, http):
    alice, bob = pair
    async with socket(http, stack.urls[0], alice) as ws:
        # All at once, none awaited: the gateway must keep their order.
        for i in range(20):
            await ws.send_str(send_frame(bob, f"m{i}", f"ws-{i}"))
        await ws.send_str(send_frame(bob, "m3", "ws-3"))  # a retry
        got = await answers(ws, 21)
    assert [a["client_id"] for a in got] == [f"ws-{i}" for i in range(20)] + ["ws-3"]
    assert all(a["type"] == "sent" and a["status"] == 201 for a in got[:20])
    retry = got[20]
    assert retry["status"] == 200 and retry["message"]["id"] == got[3]["message"]["id"]
    events = await bob.poll_until(20, bases=[stack.urls[1]])
    assert messages(events) == [f"m{i}" for i in range(20)]


async def test_refused_sends_say_why_as_the_post_would(pair, new_client, stack, http):
    alice, bob = pair
    stranger = await new_client(1).signup("ws_stranger")
    async with socket(http, stack.urls[0], alice) as ws:
        await ws.send_str(send_frame(stranger, "hello?", "s1"))
        await ws.send_str(json.dumps({"type": "send", "to": bob.user_id, "client_id": "s2"}))
        await ws.send_str(send_frame(bob, "x" * 5000, "s3"))
        got = await answers(ws, 3)
    assert [(a["type"], a["client_id"], a["status"], a["error"]["code"]) for a in got] == [
        ("send_failed", "s1", 403, "not_friend"),
        ("send_failed", "s2", 400, "missing_field"),
        ("send_failed", "s3", 413, "message_too_long"),
    ]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"type": "x"}', "unknown_frame"),
        ("[" * 20_000 + "]" * 20_000, "invalid_json"),  # deeper than json.loads goes
        ('{"type": "send", "type": "send"}', "invalid_json"),  # one key twice
    ],
    ids=["not-json", "array", "other-type", "deep", "repeated-key"],
)
async def test_a_frame_that_is_not_a_send_gets_an_error_and_the_socket_stays(
    pair, stack, http, frame, code
):
    alice, bob = pair
    async with socket(http, stack.urls[0], alice) as ws:
        await ws.send_str(frame)
        await ws.send_str(send_frame(bob, "still here", "after-error"))
        error, sent = await answers(ws, 2)
    assert error["type"] == "error" and error["error"]["code"] == code
    assert sent["type"] == "sent" and sent["client_id"] == "after-error"


async def test_websocket_sends_count_against_the_same_rate_as_posts(pair, stack, http):
    alice, bob = pair
    for gateway in stack.gateways:
        gateway.services.settings = gateway.services.settings.with_(sends_per_minute=5)
    assert (await alice.send(bob, "by post", base=stack.urls[1])).status == 201
    async with socket(http, stack.urls[0], alice) as ws:
        for i in range(6):
            await ws.send_str(send_frame(bob, f"r{i}", f"rate-{i}"))
        got = await answers(ws, 6)
    assert [a["status"] for a in got] == [201] * 4 + [429] * 2
    assert got[-1]["error"]["code"] == "rate_limited"


async def test_a_frame_over_the_request_size_limit_closes_the_socket(pair, stack, http):
    """As a POST body over LONGTAIL_MAX_REQUEST_BYTES is refused unread: 1009, too big."""
    alice, bob = pair
    async with socket(http, stack.urls[0], alice) as ws:
        await ws.send_str(send_frame(bob, "x" * 100_000, "huge"))
        async with asyncio.timeout(DEADLINE):
            while not ws.closed:
                await ws.receive()
    assert ws.close_code == 1009
    # The gateway's side goes too (after letting the client read the close).
    await eventually(lambda: stack.gateways[0].services.connections.held == 0)
