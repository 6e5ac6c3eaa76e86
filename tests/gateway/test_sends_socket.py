"""The gateways' batches of sends over their WebSocket to chatcore (chatcore.sends_socket,
gateway.chatcore_socket): same answers as `POST /internal/sends`, and a socket that
drops, stalls or is refused costs at most that batch a 503 its senders retry."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import aiohttp
import pytest

from chatcore import sends_socket
from gateway import chatcore_client, chatcore_socket
from tests.client import messages
from tests.waiting import eventually


def socket_url(stack) -> str:
    return f"http://127.0.0.1:{stack.core.port}{sends_socket.PATH}"


def secret(stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.core.settings.secret}"}


async def exchange(ws: aiohttp.ClientWebSocketResponse, frame: bytes) -> dict:
    await ws.send_bytes(frame)
    answer = await ws.receive(timeout=10)
    assert answer.type is aiohttp.WSMsgType.BINARY, answer
    return json.loads(answer.data)


def held_until_released(monkeypatch, chat) -> tuple[asyncio.Event, asyncio.Event]:
    """chatcore's next batches wait for `release` before they are stored; `entered` is
    set once one waits."""
    entered, release = asyncio.Event(), asyncio.Event()
    store = chat.send_many

    async def held(items):
        entered.set()
        await release.wait()
        return await store(items)

    monkeypatch.setattr(chat, "send_many", held)
    return entered, release


async def test_a_send_goes_over_the_socket_under_its_request_id(stack, pair, caplog):
    alice, bob = pair
    trace = f"trace-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        sent = await alice.request(
            "POST",
            "/api/messages",
            {"to": bob.user_id, "body": "hi", "client_id": "w1"},
            headers={"X-Request-ID": trace},
        )
    assert sent.status == 201
    assert messages(await bob.poll_until(1, bases=[stack.urls[1]])) == ["hi"]
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any(line.startswith(f"200 WS {sends_socket.PATH}") for line in lines), lines
    assert not any("POST /internal/sends" in line for line in lines), "not posted"
    assert len(stack.core.sockets.open) == 1, "alice's gateway keeps one socket"


async def test_a_frame_is_answered_as_its_post_would_be(stack, http, pair):
    """Each send its own outcome, paired with its frame by id; a malformed frame is a
    400 for that frame alone, and the socket goes on."""
    alice, bob = pair
    hi = {"to": bob.user_id, "body": "hi", "client_id": "a"}
    batch = {
        "id": 7,
        "sends": [
            {"user_id": alice.user_id, "message": hi},
            {"user_id": alice.user_id, "message": {**hi, "to": alice.user_id, "client_id": "b"}},
            {"user_id": alice.user_id, "message": hi},
        ],
    }
    async with http.ws_connect(socket_url(stack), headers=secret(stack)) as ws:
        answer = await exchange(ws, json.dumps(batch).encode())
        assert answer["id"] == 7 and answer["status"] == 200
        first, refused, retried = answer["results"]
        assert first["status"] == 201 and first["message"]["body"] == "hi"
        assert refused["status"] == 403 and refused["error"]["code"] == "not_friend"
        assert retried["status"] == 200 and retried["message"]["id"] == first["message"]["id"]

        bad = await exchange(ws, json.dumps({"id": 8, "sends": []}).encode())
        assert bad == {"id": 8, "status": 400, "error": bad["error"]}
        assert bad["error"]["code"] == "invalid_field"
        unreadable = await exchange(ws, b"not json")
        assert unreadable["id"] is None and unreadable["status"] == 400
        assert unreadable["error"]["code"] == "invalid_json"

        again = {**batch, "id": 9, "sends": batch["sends"][:1]}
        assert (await exchange(ws, json.dumps(again).encode()))["results"][0]["status"] == 200
    assert messages(await bob.poll_until(1, bases=[stack.urls[1]])) == ["hi"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong"])
async def test_the_socket_needs_the_shared_secret(stack, http, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(socket_url(stack), headers=headers)
    assert refused.value.status == 401
    async with http.get(socket_url(stack), headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "bad_secret"


async def test_a_socket_chatcore_closed_is_replaced_before_the_next_send(stack, pair):
    alice, bob = pair
    assert (await alice.send(bob, "one")).status == 201
    client_socket = stack.gateways[0].chatcore._socket
    for server_side in list(stack.core.sockets.open):
        server_side.close()
    await eventually(
        lambda: client_socket._connection is not None and not client_socket._connection.open,
        what="the gateway to see its socket closed",
    )
    assert (await alice.send(bob, "two")).status == 201, "no 503 for the closed socket"
    assert messages(await bob.poll_until(2, bases=[stack.urls[1]])) == ["one", "two"]


async def test_a_batch_whose_socket_drops_is_a_503_and_its_retry_finds_it(stack, pair, monkeypatch):
    """The drop is seen at once, not after the request timeout; the batch was stored
    all the same, and the sender's retry (same client_id) gets that message."""
    alice, bob = pair
    entered, release = held_until_released(monkeypatch, stack.core.chat)
    sending = asyncio.create_task(alice.send(bob, "dropped?", client_id="d1"))
    await asyncio.wait_for(entered.wait(), 5)
    for server_side in list(stack.core.sockets.open):
        server_side.close()
    dropped = await asyncio.wait_for(sending, 5)
    assert dropped.status == 503 and dropped.error_code == "chatcore_unavailable"
    assert dropped.headers["Retry-After"] == "1"
    release.set()
    retried = await alice.send(bob, "dropped?", client_id="d1")
    assert retried.status in (200, 201)
    assert messages(await bob.poll_until(1, bases=[stack.urls[1]])) == ["dropped?"]


async def test_a_batch_without_an_answer_in_time_is_a_503_and_drops_its_socket(
    stack, pair, monkeypatch
):
    """chatcore may be gone without a word: the next batch goes over a new socket."""
    alice, bob = pair
    monkeypatch.setattr(chatcore_client, "REQUEST_TIMEOUT", 0.5)
    entered, release = held_until_released(monkeypatch, stack.core.chat)
    late = await alice.send(bob, "slow", client_id="s1")
    assert late.status == 503 and late.error_code == "chatcore_unavailable"
    assert entered.is_set()
    await eventually(lambda: not stack.core.sockets.open, what="the socket to be closed")
    release.set()  # stored all the same; its answer comes to nobody
    assert (await alice.send(bob, "next")).status == 201
    assert len(stack.core.sockets.open) == 1, "a new socket"
    assert messages(await bob.poll_until(2, bases=[stack.urls[1]])) == ["slow", "next"]


async def test_stopping_chatcore_answers_the_batches_under_way_then_closes(
    stack, pair, monkeypatch
):
    alice, bob = pair
    entered, release = held_until_released(monkeypatch, stack.core.chat)
    under_way = asyncio.create_task(alice.send(bob, "under way"))
    await asyncio.wait_for(entered.wait(), 5)
    draining = asyncio.create_task(stack.core.sockets.drain(5.0))
    await eventually(lambda: stack.core.sockets.draining, what="the drain to begin")

    too_late = await bob.send(alice, "too late")
    assert too_late.status == 503 and too_late.error_code == "chatcore_stopping"
    assert too_late.headers["Retry-After"] == "1"
    assert not draining.done(), "the drain waits for the batch under way"
    release.set()
    assert (await asyncio.wait_for(under_way, 5)).status == 201
    await asyncio.wait_for(draining, 5)
    await eventually(lambda: not stack.core.sockets.open, what="both sockets to be closed")
    assert messages(await bob.poll_until(1, bases=[stack.urls[1]])) == ["under way"]


async def test_a_chatcore_without_the_socket_gets_its_batches_posted(
    stack, pair, monkeypatch, caplog
):
    """An older chatcore (mid-upgrade) answers the upgrade with a 404: the gateway posts
    its batches, and tries the socket again only after POST_AFTER_REFUSAL."""
    alice, bob = pair
    monkeypatch.setattr(chatcore_socket, "PATH", "/internal/sends/not-here")
    with caplog.at_level(logging.INFO):
        assert (await alice.send(bob, "one")).status == 201
        assert (await alice.send(bob, "two")).status == 201
    lines = [r.getMessage() for r in caplog.records]
    assert sum("refused the sends socket with 404" in line for line in lines) == 1, lines
    assert sum(line.startswith("200 POST /internal/sends") for line in lines) == 2, lines
    assert not stack.core.sockets.open
    assert messages(await bob.poll_until(2, bases=[stack.urls[1]])) == ["one", "two"]
