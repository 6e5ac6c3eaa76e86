"""Presence changes reach chatcore in batches (gateway.presence, POST /internal/presence):
many users gone at once cost chatcore one request, and every friend still hears each."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from gateway import presence
from tests.streams import read_stream

FRIENDS = 12


async def watch_presence(stack, http, watcher, count: int) -> list[dict]:
    """The presence pushes `watcher` gets on an SSE stream, until `count` of them."""
    pushes: list[dict] = []

    def enough(got) -> bool:
        pushes[:] = [c for c in got.controls if c["type"] == "presence"]
        return len(pushes) >= count

    url = stack.urls[0] + f"/api/events/stream?cursor={watcher.cursor}"
    await read_stream(http, url, watcher.headers(), "sse", enough, deadline=15)
    return pushes


async def come_and_go_together(stack, new_client, alice, count: int) -> list:
    """`count` friends of alice each hold one long-poll on gateway 1, all ending at once."""
    friends = [await new_client(1).signup(f"burst{uuid.uuid4().hex[:8]}") for _ in range(count)]
    for friend in friends:
        await alice.befriend(friend)
    for friend in friends:
        friend.cursor = (await friend.request("GET", "/api/events")).body["cursor"]
    await asyncio.gather(*(f.poll(base=stack.urls[1], timeout=1) for f in friends))
    return friends


def chatcore_presence_requests(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    return [line for line in lines if "/presence" in line and "/internal/" in line]


async def test_friends_gone_at_once_cost_chatcore_one_request_and_each_is_heard(
    stack, http, new_client, caplog
):
    alice = await new_client(0).signup(f"alice{uuid.uuid4().hex[:6]}")
    alice.cursor = (await alice.request("GET", "/api/events")).body["cursor"]
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        watching = asyncio.create_task(watch_presence(stack, http, alice, 2 * FRIENDS))
        friends = await come_and_go_together(stack, new_client, alice, FRIENDS)
        pushes = await asyncio.wait_for(watching, 20)
    ids = {f.user_id for f in friends}
    assert {p["user_id"] for p in pushes if p["online"]} == ids
    assert {p["user_id"] for p in pushes if not p["online"]} == ids
    for friend in friends:
        mine = [p["online"] for p in pushes if p["user_id"] == friend.user_id]
        assert mine == [True, False], "each friend's coming, then going"
    requests = chatcore_presence_requests(caplog)
    assert all(" POST /internal/presence " in line for line in requests), requests
    # Their comings are spread over their long-polls' starts; their goings come at once.
    goings = [line for line in requests if line.startswith("200 POST /internal/presence")]
    assert len(goings) < FRIENDS, requests


async def test_a_chatcore_without_the_batched_route_gets_one_request_each(
    stack, http, new_client, monkeypatch, caplog
):
    """An older chatcore (mid-upgrade) answers the batch with a 404: the gateway falls
    back to one request per change, and friends still hear of it."""
    monkeypatch.setattr(presence, "ANNOUNCE_PATH", "/internal/presence-not-here")
    alice = await new_client(0).signup(f"alice{uuid.uuid4().hex[:6]}")
    alice.cursor = (await alice.request("GET", "/api/events")).body["cursor"]
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        watching = asyncio.create_task(watch_presence(stack, http, alice, 4))
        friends = await come_and_go_together(stack, new_client, alice, 2)
        pushes = await asyncio.wait_for(watching, 20)
    assert sorted((p["user_id"], p["online"]) for p in pushes) == sorted(
        (f.user_id, online) for f in friends for online in (True, False)
    )
    requests = chatcore_presence_requests(caplog)
    paths = [f" POST /internal/users/{f.user_id}/presence " for f in friends]
    assert sum(path in line for line in requests for path in paths) == 4, requests


def presence_url(stack) -> str:
    return f"http://127.0.0.1:{stack.core.port}/internal/presence"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"changes": []},
        {"changes": {"user_id": 1, "online": True}},
        {"changes": [1]},
        {"changes": [{"user_id": 1}]},
        {"changes": [{"user_id": 1, "online": "yes"}]},
        {"changes": [{"user_id": "x", "online": True}]},
        {"changes": [{"user_id": 1, "online": True}] * 1001},
    ],
)
async def test_chatcore_refuses_a_malformed_batch_of_presence_changes(stack, http, body):
    headers = {"Authorization": f"Bearer {stack.core.settings.secret}"}
    async with http.post(presence_url(stack), json=body, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_field"


async def test_the_batched_route_needs_the_shared_secret(stack, http):
    body = {"changes": [{"user_id": 1, "online": True}]}
    async with http.post(presence_url(stack), json=body) as resp:
        assert resp.status == 401
