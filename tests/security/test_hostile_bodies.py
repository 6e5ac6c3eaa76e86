"""Hostile request bodies: each gets a clear 4xx (or, past the 16 MiB drain limit, a
closed connection), never a 5xx, and the gateway keeps serving everyone afterwards."""

from __future__ import annotations

import json

import pytest

from gateway.base import DRAIN_LIMIT
from tests.client import Client, messages
from tests.security.rawhttp import exchange, request

JSON = {"Content-Type": "application/json"}


async def still_serving(client: Client, stack) -> None:
    for url in stack.urls:
        me = await client.request("GET", "/api/me", base=url)
        assert me.status == 200 and me.body["id"] == client.user_id


def send_body(to: int, **extra) -> dict:
    return {"to": to, "body": "hello", "client_id": "hostile-1", **extra}


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


async def post_raw(client: Client, raw: bytes, path: str = "/api/messages") -> tuple[int, str]:
    resp = await client.request("POST", path, raw=raw, headers=JSON)
    assert resp.body["error"]["message"] if resp.status >= 400 else True
    return resp.status, resp.error_code or ""


HOSTILE_JSON = {
    "just-over-64KiB": (
        b'{"to": 2, "body": "x", "client_id": "a", "pad": "' + b"x" * 66_000 + b'"}',
        413,
        "body_too_large",
    ),
    "30k-element-array": (
        b'{"to": [' + b"1," * 30_000 + b'1], "body": "x", "client_id": "a"}',
        400,
        "invalid_field",
    ),
    "4k-keys": (
        b"{" + b",".join(b'"k%d": %d' % (i, i) for i in range(4000)) + b"}",
        400,
        "missing_field",
    ),
    "nested-arrays": (b'{"to": ' + nested(10_000).encode() + b"}", 400, "invalid_json"),
    "nested-objects": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "invalid_json"),
    "unclosed-nesting": (b"[" * 60_000, 400, "invalid_json"),
    "depth-34": (b'{"to": ' + nested(33).encode() + b"}", 400, "invalid_json"),
    "utf8-bom-like-garbage": (b"\xff\xfe{}", 400, "invalid_json"),
    "utf8-overlong": (b'{"body": "\xc0\xaf"}', 400, "invalid_json"),
    "utf8-encoded-surrogate": (b'{"body": "\xed\xa0\x80"}', 400, "invalid_json"),
    "utf8-truncated": (b'{"body": "\xe2\x82"}', 400, "invalid_json"),
    "utf8-5-byte": (b'{"body": "\xf8\x88\x80\x80\x80"}', 400, "invalid_json"),
    "utf8-bom": (b"\xef\xbb\xbf{}", 400, "invalid_json"),
    "5000-digit-number": (
        b'{"to": 1' + b"0" * 5000 + b', "body": "x", "client_id": "a"}',
        400,
        "invalid_json",
    ),
    "1e400": (b'{"to": 1e400, "body": "x", "client_id": "a"}', 400, "invalid_field"),
    "NaN": (b'{"to": NaN, "body": "x", "client_id": "a"}', 400, "invalid_field"),
    "-Inf": (b'{"to": -Infinity, "body": "x", "client_id": "a"}', 400, "invalid_field"),
    "float-id": (b'{"to": 2.0, "body": "x", "client_id": "a"}', 400, "invalid_field"),
    "negative-id": (b'{"to": -2, "body": "x", "client_id": "a"}', 400, "invalid_field"),
    "json-string": (b'"just a string"', 400, "invalid_json"),
    "json-null": (b"null", 400, "invalid_json"),
    "empty": (b"", 400, "invalid_json"),
    "two-documents": (b'{"to": 2}{"to": 3}', 400, "invalid_json"),
    "nul-bytes-raw": (b"\x00" * 100, 400, "invalid_json"),
}


async def test_hostile_json_is_a_clear_4xx(pair, stack):
    alice, _ = pair
    answers = {case: await post_raw(alice, raw) for case, (raw, *_) in HOSTILE_JSON.items()}
    expected = {case: tuple(want) for case, (_, *want) in HOSTILE_JSON.items()}
    assert {c: a for c, a in answers.items() if a != expected[c]} == {}
    await still_serving(alice, stack)


async def test_nesting_up_to_the_limit_is_fine_and_brackets_inside_strings_do_not_count(pair):
    alice, bob = pair
    deep_ok = json.loads(nested(31))
    sent = await alice.request(
        "POST", "/api/messages", send_body(bob.user_id, extra=deep_ok, body="[" * 1900 + "{" * 1900)
    )
    assert sent.status == 201
    assert messages(await bob.poll(timeout=0)) == ["[" * 1900 + "{" * 1900]


async def test_duplicate_keys_cannot_smuggle_a_message_to_a_stranger(pair, new_client):
    """The gateway and chatcore read the same (last) value of a repeated key, so what the
    gateway checked is what chatcore does: no parser differential."""
    alice, bob = pair
    stranger = await new_client(1).signup("stranger" + str(alice.user_id))
    raw = b'{"to": %d, "to": %d, "body": "dup", "client_id": "dup-1"}' % (
        stranger.user_id,
        bob.user_id,
    )
    status, _ = await post_raw(alice, raw)
    assert status in (201, 400)
    assert await stranger.poll(timeout=0) == []
    raw = b'{"to": %d, "to": %d, "body": "dup", "client_id": "dup-2"}' % (
        bob.user_id,
        stranger.user_id,
    )
    assert (await post_raw(alice, raw))[0] in (400, 403)
    assert await stranger.poll(timeout=0) == []


async def test_duplicate_keys_are_refused(pair):
    alice, bob = pair
    raw = b'{"to": %d, "body": "a", "body": "b", "client_id": "dup-3"}' % bob.user_id
    assert await post_raw(alice, raw) == (400, "invalid_json")


TOO_BIG = 2**63  # one past PostgreSQL's BIGINT and SQLite's INTEGER


def id_fields(conversation: int, room: int) -> dict[str, tuple[str, str, dict | None]]:
    """(method, path, body) for every id a client can put in a request."""
    return {
        "send-to": ("POST", "/api/messages", {"to": TOO_BIG, "body": "x", "client_id": "b1"}),
        "send-conversation": (
            "POST",
            "/api/messages",
            {"conversation_id": TOO_BIG, "body": "x", "client_id": "b2"},
        ),
        "typing": ("POST", "/api/typing", {"conversation_id": TOO_BIG}),
        "room-members": ("POST", "/api/rooms", {"name": "r", "members": [TOO_BIG]}),
        "room-invite": ("POST", f"/api/rooms/{room}/members", {"user_id": TOO_BIG}),
        "read": ("POST", f"/api/conversations/{conversation}/read", {"message_id": TOO_BIG}),
        "history-before": (
            "GET",
            f"/api/conversations/{conversation}/messages?before={TOO_BIG}",
            None,
        ),
    }


@pytest.mark.parametrize(
    "field",
    [
        "send-to",
        "send-conversation",
        "typing",
        "room-members",
        "room-invite",
        "read",
        "history-before",
    ],
)
async def test_an_id_too_big_for_the_database_is_a_400(field, pair, stack):
    alice, bob = pair
    conversation = (await alice.send(bob, "hi")).body["message"]["conversation_id"]
    room = (await alice.request("POST", "/api/rooms", {"name": "r", "members": [bob.user_id]})).body
    method, path, body = id_fields(conversation, room["id"])[field]
    resp = await alice.request(method, path, body)
    assert resp.status == 400, resp
    await still_serving(alice, stack)


async def test_the_largest_64_bit_id_is_simply_not_found(pair):
    alice, _ = pair
    sent = await alice.request(
        "POST", "/api/messages", {"to": 2**63 - 1, "body": "x", "client_id": "m"}
    )
    assert sent.status == 403 and sent.error_code == "not_friend"


STRANGE = {
    "nul": "a\x00b",  # PostgreSQL text cannot hold it; SQLite can
    "lone-surrogate": "a\ud800b",  # valid JSON (\ud800), not encodable as UTF-8
    "bidi-zero-width-max-codepoint": "\ufeff\u202e\u200b\U0010ffff",
}


def string_fields(bob: Client, value: str) -> dict:
    return {
        "message-body": ("/api/messages", {"to": bob.user_id, "body": value, "client_id": "s1"}),
        "client-id": ("/api/messages", {"to": bob.user_id, "body": "x", "client_id": value}),
        "friend-username": ("/api/friends", {"username": value}),
        "room-name": ("/api/rooms", {"name": value, "members": []}),
        "register-username": ("/api/register", {"username": value, "password": "whatever1"}),
        "register-password": ("/api/register", {"username": "strange1", "password": value * 4}),
    }


@pytest.mark.parametrize("value", STRANGE.values(), ids=STRANGE.keys())
async def test_strange_strings_are_stored_intact_or_refused_never_a_5xx(value, pair, stack):
    alice, bob = pair
    statuses = {}
    for field, (path, body) in string_fields(bob, value).items():
        statuses[field] = (await alice.request("POST", path, body)).status
    assert {f: s for f, s in statuses.items() if s >= 500} == {}
    if statuses["message-body"] == 201:
        assert messages(await bob.poll(timeout=0))[0] == value
    await still_serving(alice, stack)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(STRANGE["nul"], id="nul"),
        pytest.param(STRANGE["lone-surrogate"], id="lone-surrogate"),
        pytest.param(STRANGE["bidi-zero-width-max-codepoint"], id="bidi-zero-width-max"),
    ],
)
async def test_a_login_with_a_strange_username_is_a_clear_4xx(value, new_client, stack):
    client = new_client(0)
    resp = await client.request("POST", "/api/login", {"username": value, "password": "whatever1"})
    assert resp.status in (400, 401), resp
    assert (await client.request("GET", "/healthz")).status == 200


# Above the drain limit Tornado stops reading: a bare "400 Bad Request" with no body, and
# the connection closed. Up to it the body is read and dropped, for a JSON 413.
async def test_a_declared_body_over_16_MiB_gets_a_bare_400_and_a_closed_connection(pair, stack):
    alice, _ = pair
    head = [
        ("Host", "gateway"),
        ("Authorization", f"Bearer {alice.token}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(DRAIN_LIMIT + 1)),
    ]
    got = await exchange(stack.urls[0], request("POST", "/api/messages", head, b"{"))
    assert got.statuses == [400] and got.closed
    await still_serving(alice, stack)


async def test_a_chunked_body_over_16_MiB_is_cut_off(pair, stack):
    alice, _ = pair
    head = [
        ("Host", "gateway"),
        ("Authorization", f"Bearer {alice.token}"),
        ("Content-Type", "application/json"),
        ("Transfer-Encoding", "chunked"),
    ]
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"  # 1 MiB
    body = chunk * 17 + b"0\r\n\r\n"
    got = await exchange(stack.urls[0], request("POST", "/api/messages", head, body))
    # Closed mid-upload: the bare 400 arrives unless the reset overtakes it.
    assert got.closed and got.statuses in ([400], [])
    await still_serving(alice, stack)


async def test_a_16_MiB_body_is_drained_for_a_json_413(pair, stack):
    alice, bob = pair
    head = [
        ("Host", "gateway"),
        ("Authorization", f"Bearer {alice.token}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(DRAIN_LIMIT)),
        ("Connection", "close"),
    ]
    got = await exchange(stack.urls[1], request("POST", "/api/messages", head, b"{" * DRAIN_LIMIT))
    assert got.statuses == [413] and b'"code":"body_too_large"' in got.raw
    await still_serving(alice, stack)
    assert messages(await bob.poll(timeout=0)) == []
