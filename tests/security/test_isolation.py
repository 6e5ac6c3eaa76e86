"""Nobody reads another user's events: not by cursor, not by Last-Event-ID, not by a
user-id parameter or header, not on any transport, not through history or rooms.

carol is alice's friend but not in alice and bob's conversation. While bob holds a stream
on the same gateway as carol (so that gateway's hub is routing bob's events), alice sends
bob secrets and carol markers; carol, borrowing bob's cursor and naming bob in every way
a request can, gets exactly her markers, and bob gets every secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.client import Client, messages
from tests.conftest import Stack
from tests.security.conftest import Trio
from tests.security.transports import TRANSPORTS, open_status
from tests.streams import Received, read_stream
from tests.waiting import eventually

STREAMS = {
    "sse": "/api/events/stream",
    "sse-last-event-id": "/api/events/stream",
    "xhr": "/api/events/xhr",
    "multipart": "/api/events/multipart",
    "iframe": "/api/events/iframe",
}
POLLS = {
    "longpoll": "/api/events",
    "interval": "/api/events",
    "jsonp": "/api/events/jsonp",
    "piggyback": "/api/me",
}


def impersonation(victim: Client) -> tuple[str, dict[str, str]]:
    """Every way a request could name a user other than its session's."""
    uid, name = victim.user_id, victim.username
    query = f"user={uid}&user_id={uid}&userId={uid}&uid={uid}&id={uid}&as={uid}&username={name}"
    headers = {
        "X-User-Id": str(uid),
        "X-Longtail-User": str(uid),
        "X-Forwarded-User": str(name),
        "X-Remote-User": str(name),
    }
    return query, headers


def holding(stack: Stack, gateway: int, user: Client) -> Callable[[], bool]:
    return lambda: user.user_id in stack.gateways[gateway].hub.local_users()


def jsonp_events(body: bytes) -> dict[str, Any]:
    assert body.startswith(b"/**/cb(") and body.endswith(b");"), body[:80]
    return json.loads(body[len(b"/**/cb(") : -2])


class Outsider:
    """carol, reading her events from bob's cursor with bob's name on the request."""

    def __init__(self, trio: Trio, stack: Stack, http: aiohttp.ClientSession, gateway: int):
        self.carol = trio.carol
        self.base = stack.urls[gateway]
        self.http = http
        self.query, self.fake_headers = impersonation(trio.bob)
        self.raw = bytearray()
        self.events: list[dict[str, Any]] = []
        self.held = holding(stack, gateway, trio.carol)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.carol.headers(), **self.fake_headers, **(extra or {})}

    async def get(self, path: str, extra: dict[str, str] | None = None) -> bytes:
        async with self.http.get(self.base + path, headers=self.headers(extra)) as resp:
            body = await resp.read()
            assert resp.status == 200, (path, resp.status, body[:200])
        self.raw += body
        return body

    async def poll(self, kind: str, cursor: int, timeout: float) -> int:
        """One request of a polling transport; returns the new cursor."""
        if kind == "piggyback":
            body = json.loads(
                await self.get(f"/api/me?{self.query}", {"X-Longtail-Cursor": str(cursor)})
            )
            assert body["id"] == self.carol.user_id
            answer = body["piggyback"]
        else:
            path = POLLS[kind] + f"?cursor={cursor}&timeout={timeout}&{self.query}"
            if kind == "jsonp":
                answer = jsonp_events(
                    await self.get(path + f"&callback=cb&token={self.carol.token}")
                )
            else:
                answer = json.loads(await self.get(path))
        self.events += answer["events"]
        return int(answer["cursor"])


async def read_polls(reader: Outsider, kind: str, live: Callable[[], Awaitable[None]]) -> None:
    cursor = await reader.poll(kind, reader.carol.cursor, 0)  # catch-up: the first marker
    if kind in ("longpoll", "jsonp"):
        waiting = asyncio.create_task(reader.poll(kind, cursor, 5))
        await eventually(reader.held, what="carol's poll is held")
        await live()
        await waiting
        return
    await live()

    async def second_marker() -> bool:
        nonlocal cursor
        cursor = await reader.poll(kind, cursor, 0)
        return "mark-2" in messages(reader.events)

    await eventually(second_marker, what="carol's second marker")


async def read_streams(reader: Outsider, kind: str, live: Callable[[], Awaitable[None]]) -> None:
    extra = {"Last-Event-ID": str(reader.carol.cursor)} if kind == "sse-last-event-id" else {}
    cursor = "" if extra else f"cursor={reader.carol.cursor}&"
    url = reader.base + STREAMS[kind] + f"?{cursor}{reader.query}"
    if kind == "iframe":
        url += f"&token={reader.carol.token}"
    parse_as = "sse" if kind.startswith("sse") else kind
    task = asyncio.create_task(
        read_stream(reader.http, url, reader.headers(extra), parse_as, has("mark-2"))
    )
    await eventually(reader.held, what="carol's stream is open")
    await live()
    got = await task
    assert got.status == 200, bytes(got.raw[:200])
    reader.raw += got.raw
    reader.events += got.events


async def read_websocket(reader: Outsider, live: Callable[[], Awaitable[None]]) -> None:
    url = reader.base.replace("http", "ws", 1) + f"/api/events/ws?cursor={reader.carol.cursor}"
    headers = reader.headers({"Origin": reader.base})
    async with reader.http.ws_connect(url + f"&{reader.query}", headers=headers) as ws:
        await eventually(reader.held, what="carol's socket is open")
        await live()
        while "mark-2" not in messages(reader.events):
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            reader.raw += msg.data.encode()
            item = json.loads(msg.data)
            if "seq" in item:
                reader.events.append(item)


def has(body: str) -> Callable[[Received], bool]:
    return lambda got: body in messages(got.events)


@pytest.mark.parametrize("kind", [*POLLS, *STREAMS, "ws"])
async def test_an_outsider_never_receives_other_peoples_messages(kind, trio, stack, http):
    alice, bob, carol = trio.alice, trio.bob, trio.carol
    secret = f"secret-{uuid.uuid4().hex}"
    # bob listens on gateway 1 too: its hub routes his events next to carol's.
    bob_url = stack.urls[1] + f"/api/events/stream?cursor={bob.cursor}"
    bob_task = asyncio.create_task(
        read_stream(http, bob_url, bob.headers(), "sse", has(f"{secret}-2"))
    )
    await eventually(holding(stack, 1, bob), what="bob's stream is open")
    assert (await alice.send(bob, f"{secret}-1")).status == 201
    assert (await alice.send(carol, "mark-1")).status == 201

    async def live() -> None:
        assert (await alice.send(bob, f"{secret}-2")).status == 201
        assert (await alice.send(carol, "mark-2")).status == 201

    reader = Outsider(trio, stack, http, gateway=1)
    if kind in POLLS:
        await read_polls(reader, kind, live)
    elif kind == "ws":
        await read_websocket(reader, live)
    else:
        await read_streams(reader, kind, live)

    assert secret.encode() not in reader.raw
    assert messages(reader.events) == ["mark-1", "mark-2"]
    assert [e["seq"] for e in reader.events] == [3, 4]  # carol's own seqs after "bob's" 2
    assert {e["message"]["conversation_id"] for e in reader.events} == {trio.alice_carol}
    # The secrets did go out, on the very hub carol was reading from.
    assert messages((await bob_task).events) == [f"{secret}-1", f"{secret}-2"]


def forgeries(victim: Client) -> list[str]:
    """Tokens an attacker could make up from what they know of bob."""
    token = victim.token or ""
    return [
        token[:-1],
        token + "x",
        token.swapcase(),
        hashlib.sha256(token.encode()).hexdigest(),  # the session cache's key for it
        str(victim.user_id),
        str(victim.username),
        "null",
        "undefined",
        "' OR '1'='1",
        "*",
    ]


async def test_forged_tokens_are_refused_by_every_transport(trio, stack, http):
    answers = {}
    for forged in forgeries(trio.bob):
        for transport, (_, query) in TRANSPORTS.items():
            for how in ("bearer", "cookie", "query") if query else ("bearer", "cookie"):
                status = await open_status(http, stack.urls[1], transport, how, forged)
                answers[(forged, transport, how)] = status
    assert {k: s for k, s in answers.items() if s != 401} == {}


async def test_jsonp_with_a_forged_token_calls_back_with_an_error_only(trio, stack, http):
    for forged in forgeries(trio.bob):
        params = {"callback": "cb", "cursor": "0", "timeout": "0", "token": forged}
        async with http.get(stack.urls[0] + "/api/events/jsonp", params=params) as resp:
            assert resp.status == 401
            assert jsonp_events(await resp.read()) == {
                "error": {
                    "code": "unauthorized",
                    "message": "The session is invalid or has expired; log in again.",
                }
            }


@pytest.mark.parametrize("path", ["/api/me", "/api/conversations", "/api/friends"])
async def test_user_id_parameters_and_headers_are_ignored_by_the_api(trio, path):
    carol, bob = trio.carol, trio.bob
    query, headers = impersonation(bob)
    mine = await carol.request("GET", path)
    spoofed = await carol.request("GET", f"{path}?{query}", headers=headers)
    assert spoofed.status == 200 and spoofed.body == mine.body
    assert bob.username not in json.dumps(spoofed.body)


async def test_a_send_cannot_claim_another_sender(trio):
    alice, bob, carol = trio.alice, trio.bob, trio.carol
    forged = {
        "to": alice.user_id,
        "body": "who am I?",
        "client_id": "forge-1",
        "from": bob.user_id,
        "sender": {"id": bob.user_id, "username": bob.username},
        "sender_id": bob.user_id,
        "user_id": bob.user_id,
    }
    sent = await carol.request("POST", "/api/messages", forged)
    assert sent.status == 201
    assert sent.body["message"]["sender"] == {"id": carol.user_id, "username": carol.username}
    assert sent.body["message"]["conversation_id"] == trio.alice_carol
    got = [e for e in await alice.poll(timeout=0) if e["type"] == "message"]
    assert [e["message"]["sender"]["id"] for e in got] == [carol.user_id]
    assert "who am I?" not in messages(await bob.poll(timeout=0))


async def test_history_and_room_of_a_conversation_you_are_not_in_are_404(trio):
    alice, bob, carol = trio.alice, trio.bob, trio.carol
    await alice.send(bob, "private")
    room = await alice.request("POST", "/api/rooms", {"name": "a+b", "members": [bob.user_id]})
    assert room.status == 201
    for conversation in (trio.alice_bob, room.body["id"], 987654321):
        history = await carol.request("GET", f"/api/conversations/{conversation}/messages")
        assert (history.status, history.error_code) == (404, "conversation_not_found")
        details = await carol.request("GET", f"/api/rooms/{conversation}")
        assert details.status == 404 and details.error_code in (
            "conversation_not_found",
            "room_not_found",
        )
        assert "private" not in json.dumps(history.body) + json.dumps(details.body)


async def test_writes_into_a_conversation_you_are_not_in_change_nothing(trio):
    alice, bob, carol = trio.alice, trio.bob, trio.carol
    room = (
        await alice.request("POST", "/api/rooms", {"name": "a+b", "members": [bob.user_id]})
    ).body
    first = (await alice.send(bob, "first")).body["message"]
    for conversation in (trio.alice_bob, room["id"]):
        attempts = [
            (
                "/api/messages",
                {"conversation_id": conversation, "body": "x", "client_id": f"in{conversation}"},
            ),
            (f"/api/conversations/{conversation}/read", {"message_id": first["id"]}),
            ("/api/typing", {"conversation_id": conversation}),
            (f"/api/rooms/{conversation}/members", {"user_id": carol.user_id}),
            (f"/api/rooms/{conversation}/leave", None),
        ]
        for path, body in attempts:
            resp = await carol.request("POST", path, body)
            assert resp.status == 404, (path, resp)
    # Nor can she unfriend alice and bob: DELETE acts on her own friendships only.
    assert (await carol.request("DELETE", f"/api/friends/{bob.user_id}")).status == 404
    listing = (await bob.request("GET", "/api/friends")).body["friends"]
    assert [f["id"] for f in listing] == [alice.user_id]
    members = (await bob.request("GET", f"/api/rooms/{room['id']}")).body["members"]
    assert sorted(m["id"] for m in members) == sorted([alice.user_id, bob.user_id])
    history = (await bob.request("GET", f"/api/conversations/{trio.alice_bob}/messages")).body
    assert [m["body"] for m in history["messages"]] == ["first"]
    # bob's stream heard of the room and alice's message, nothing of carol's attempts.
    assert [e["type"] for e in await bob.poll(timeout=0)] == ["room_joined", "message"]
