"""The public REST API: accounts, friends, conversations, and a clear 4xx for bad input."""

from __future__ import annotations

import asyncio
import logging
import uuid

import aiohttp
import pytest

from tests.client import Client, messages
from tests.waiting import eventually


def name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def test_register_login_me_logout(new_client):
    client: Client = new_client(0)
    username = name("dora")
    created = await client.request(
        "POST", "/api/register", {"username": username, "password": "s3cret-pass"}
    )
    assert created.status == 201 and created.body == {
        "id": created.body["id"],
        "username": username,
    }
    login = await client.request(
        "POST", "/api/login", {"username": username.upper(), "password": "s3cret-pass"}
    )
    assert login.status == 200 and login.body["username"] == username and login.body["token"]
    cookie = login.headers.getall("Set-Cookie")[0]
    assert "longtail_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    client.token = login.body["token"]
    assert (await client.request("GET", "/api/me")).body == {
        "id": created.body["id"],
        "username": username,
    }


async def test_logout_revokes_the_token_on_every_gateway(new_client, stack):
    client = await new_client(0).signup(name("eve"))
    assert (await client.request("GET", "/api/me", base=stack.urls[1])).status == 200
    assert (await client.request("POST", "/api/logout", {})).status == 200
    for url in stack.urls:
        resp = await client.request("GET", "/api/me", base=url)
        assert resp.status == 401 and resp.error_code == "unauthorized"


async def test_session_cookie_authenticates(stack):
    username = name("cookie")
    # A jar that, like a browser, keeps cookies set by an IP-address host.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        anon = Client(browser, stack.urls[0])
        await anon.request(
            "POST", "/api/register", {"username": username, "password": "password12"}
        )
        await anon.request("POST", "/api/login", {"username": username, "password": "password12"})
        resp = await anon.request("GET", "/api/me", base=stack.urls[1])
        assert resp.status == 200 and resp.body["username"] == username
        assert (await anon.request("POST", "/api/logout", {})).status == 200
        assert (await anon.request("GET", "/api/me")).status == 401


async def test_friend_request_accept_list_and_remove(new_client, stack):
    ann = await new_client(0).signup(name("ann"))
    ben = await new_client(1).signup(name("ben"))
    asked = await ann.request("POST", "/api/friends", {"username": ben.username})
    assert asked.status == 201 and asked.body["status"] == "pending"
    again = await ann.request("POST", "/api/friends", {"username": ben.username})
    assert again.status == 200 and again.body["status"] == "pending"
    listing = (await ben.request("GET", "/api/friends")).body
    assert listing["incoming"] == [{"id": ann.user_id, "username": ann.username}]
    assert (await ann.request("GET", "/api/friends")).body["outgoing"][0]["id"] == ben.user_id
    accepted = await ben.request("POST", "/api/friends", {"username": ann.username})
    assert accepted.status == 201 and accepted.body["status"] == "accepted"
    friends = (await ann.request("GET", "/api/friends")).body
    assert friends["friends"] == [{"id": ben.user_id, "username": ben.username, "online": False}]
    # Both people's streams say what happened, in order.
    assert [e["type"] for e in await ben.poll(timeout=0)] == ["friend_request", "friend_accepted"]
    assert (await ann.request("DELETE", f"/api/friends/{ben.user_id}")).status == 204
    assert (await ben.request("GET", "/api/friends")).body["friends"] == []
    assert (await ann.send(ben, "still there?")).status == 403


async def test_friend_shows_online_while_holding_a_connection(pair):
    alice, bob = pair
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    waiting = asyncio.create_task(bob.poll(timeout=3))

    async def bob_online() -> bool:
        friends = (await alice.request("GET", "/api/friends")).body["friends"]
        return friends == [{"id": bob.user_id, "username": bob.username, "online": True}]

    await eventually(bob_online, what="bob shows online while his long-poll is held")
    await waiting
    # Gone, past the grace period: offline.
    await eventually(lambda: _not(bob_online()), what="bob shows offline after he left")


async def _not(value) -> bool:
    return not await value


async def test_conversations_unread_history_and_read_receipts(pair):
    alice, bob = pair
    for i in range(7):
        assert (await alice.send(bob, f"msg {i}")).status == 201
    convs = (await bob.request("GET", "/api/conversations")).body["conversations"]
    assert len(convs) == 1
    conv = convs[0]
    assert conv["with"] == {"id": alice.user_id, "username": alice.username}
    assert conv["unread"] == 7 and conv["last_message"]["body"] == "msg 6"
    page = (await bob.request("GET", f"/api/conversations/{conv['id']}/messages?limit=3")).body
    assert [m["body"] for m in page["messages"]] == ["msg 4", "msg 5", "msg 6"]
    older = (
        await bob.request(
            "GET", f"/api/conversations/{conv['id']}/messages?limit=5&before={page['before']}"
        )
    ).body
    assert [m["body"] for m in older["messages"]] == ["msg 0", "msg 1", "msg 2", "msg 3"]
    assert older["before"] is None
    last_id = page["messages"][-1]["id"]
    read = await bob.request(
        "POST", f"/api/conversations/{conv['id']}/read", {"message_id": last_id}
    )
    assert read.status == 200
    assert (await bob.request("GET", "/api/conversations")).body["conversations"][0]["unread"] == 0
    alice.cursor = 0
    receipts = [e for e in await alice.poll_until(10) if e["type"] == "read"]
    assert receipts[-1]["message_id"] == last_id and receipts[-1]["user_id"] == bob.user_id


async def test_history_of_someone_elses_conversation_is_not_found(pair, new_client):
    alice, bob = pair
    await alice.send(bob, "private")
    conv_id = (await bob.request("GET", "/api/conversations")).body["conversations"][0]["id"]
    mallory = await new_client(0).signup(name("mallory"))
    resp = await mallory.request("GET", f"/api/conversations/{conv_id}/messages")
    assert resp.status == 404 and resp.error_code == "conversation_not_found"


BAD_BODIES = [
    pytest.param(b"{not json", "application/json", 400, "invalid_json", id="malformed-json"),
    pytest.param(b"[1, 2]", "application/json", 400, "invalid_json", id="not-an-object"),
    pytest.param(b"\xff\xfe{}", "application/json", 400, "invalid_json", id="invalid-utf8"),
    pytest.param(
        b"[" * 5000 + b"]" * 5000, "application/json", 400, "invalid_json", id="deeply-nested"
    ),
    pytest.param(b'{"to": 1}', "text/plain", 415, "unsupported_media_type", id="form-content-type"),
    pytest.param(b"{}", "application/json", 400, "missing_field", id="missing-fields"),
    pytest.param(
        b'{"to": "2", "body": "x", "client_id": "a"}',
        "application/json",
        400,
        "invalid_field",
        id="wrong-type-to",
    ),
    pytest.param(
        b'{"to": 2, "body": 5, "client_id": "a"}',
        "application/json",
        400,
        "invalid_field",
        id="wrong-type-body",
    ),
    pytest.param(
        b'{"to": true, "body": "x", "client_id": "a"}',
        "application/json",
        400,
        "invalid_field",
        id="bool-is-not-an-id",
    ),
    pytest.param(
        b'{"to": 2, "body": "   ", "client_id": "a"}',
        "application/json",
        400,
        "empty_message",
        id="blank-body",
    ),
]


@pytest.mark.parametrize(("raw", "content_type", "status", "code"), BAD_BODIES)
async def test_bad_message_bodies_get_a_clear_4xx(pair, raw, content_type, status, code):
    alice, _ = pair
    resp = await alice.request(
        "POST", "/api/messages", raw=raw, headers={"Content-Type": content_type}
    )
    assert resp.status == status, resp
    assert resp.error_code == code and resp.body["error"]["message"]


async def test_oversized_body_is_413_before_it_is_read(pair):
    alice, _bob = pair
    resp = await alice.request("POST", "/api/messages", raw=b"x" * 2_000_000)
    assert resp.status == 413 and resp.error_code == "body_too_large"


async def test_message_too_long_is_413(pair, settings):
    alice, bob = pair
    resp = await alice.send(bob, "x" * (settings.max_message_chars + 1))
    assert resp.status == 413 and resp.error_code == "message_too_long"


async def test_message_to_a_stranger_is_403(pair, new_client):
    alice, _ = pair
    stranger = await new_client(1).signup(name("stranger"))
    resp = await alice.send(stranger, "hello?")
    assert resp.status == 403 and resp.error_code == "not_friend"
    resp = await alice.request(
        "POST", "/api/messages", {"to": 99999999, "body": "x", "client_id": "z"}
    )
    assert resp.status == 403


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("cursor=abc", "invalid_cursor"),
        ("cursor=-1", "invalid_cursor"),
        ("cursor=1.5", "invalid_cursor"),
        ("cursor=99999", "cursor_ahead"),
        ("cursor=0&timeout=soon", "invalid_timeout"),
        ("cursor=0&timeout=-1", "invalid_timeout"),
        ("cursor=0&timeout=100000", "invalid_timeout"),
    ],
)
async def test_bad_cursor_or_timeout_is_400_not_a_hang(pair, query, code):
    _, bob = pair
    resp = await bob.request("GET", f"/api/events?{query}", timeout=5)
    assert resp.status == 400 and resp.error_code == code


async def test_future_cursor_on_sse_is_400_before_streaming(pair):
    _, bob = pair
    resp = await bob.request("GET", "/api/events/stream?cursor=500", timeout=5)
    assert resp.status == 400 and resp.error_code == "cursor_ahead"


@pytest.mark.parametrize(
    "path",
    [
        "/api/me",
        "/api/friends",
        "/api/conversations",
        "/api/events?cursor=0",
        "/api/events/stream",
        "/api/events/ws",
    ],
)
async def test_no_or_bad_credentials_are_401(http, stack, path):
    for token in (None, "not-a-real-token"):
        client = Client(http, stack.urls[0], token=token)
        resp = await client.request("GET", path, timeout=5)
        assert resp.status == 401 and resp.error_code == "unauthorized", (path, token, resp)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"username": "ab", "password": "long enough"}, 400, "invalid_username"),
        ({"username": "has space", "password": "long enough"}, 400, "invalid_username"),
        ({"username": "shortpw", "password": "short"}, 400, "weak_password"),
        ({"username": "x" * 100, "password": "long enough"}, 400, "invalid_field"),
        ({"password": "long enough"}, 400, "missing_field"),
    ],
)
async def test_register_rejects_bad_accounts(new_client, body, status, code):
    resp = await new_client(0).request("POST", "/api/register", body)
    assert resp.status == status and resp.error_code == code


async def test_register_taken_username_is_409_case_insensitively(new_client):
    username = name("Taken")
    client = new_client(0)
    assert (
        await client.request(
            "POST", "/api/register", {"username": username, "password": "password1"}
        )
    ).status == 201
    resp = await client.request(
        "POST", "/api/register", {"username": username.lower(), "password": "password1"}
    )
    assert resp.status == 409 and resp.error_code == "username_taken"


async def test_wrong_password_is_401(new_client):
    client = await new_client(0).signup(name("frank"))
    resp = await client.request(
        "POST", "/api/login", {"username": client.username, "password": "wrong password"}
    )
    assert resp.status == 401 and resp.error_code == "invalid_credentials"
    resp = await client.request(
        "POST", "/api/login", {"username": "nobody-here", "password": "wrong password"}
    )
    assert resp.status == 401 and resp.error_code == "invalid_credentials"


async def test_unknown_path_and_method_are_json_errors(pair, caplog):
    alice, _ = pair
    resp = await alice.request("GET", "/api/nothing-here")
    assert resp.status == 404 and resp.error_code == "not_found"
    with caplog.at_level(logging.INFO):
        resp = await alice.request("PUT", "/api/messages", {})
    assert resp.status == 405 and resp.error_code == "method_not_allowed"
    # The client's mistake: logged, but not as an error with a traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_health_and_readiness(http, stack):
    for url in stack.urls:
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(url + "/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["ready"] is True


async def test_non_ascii_and_markup_bodies_round_trip(pair):
    alice, bob = pair
    body = 'héllo 👋 </script><script>alert("x")</script>\n"quoted"\u2028'
    assert (await alice.send(bob, body)).status == 201
    assert messages(await bob.poll(timeout=0))[-1] == body


async def test_concurrent_friend_requests_from_one_user_all_succeed(new_client):
    """A user adding many people at once (a contacts import) gets every answer, none a
    500 from two transactions locking the same rows in opposite orders."""
    alice = await new_client(0).signup(f"alice{uuid.uuid4().hex[:6]}")
    others = [await new_client(i % 2).signup(f"f{i}{uuid.uuid4().hex[:6]}") for i in range(8)]
    asks = [
        alice.request("POST", "/api/friends", {"username": o.username}, base=alice.base)
        for o in others
    ]
    accepts = [o.request("POST", "/api/friends", {"username": alice.username}) for o in others[:4]]
    # Half of them ask back at the same moment: either side's request may come first.
    answers = await asyncio.gather(*asks, *accepts)
    assert [a.status for a in answers] == [201] * 12, answers
    listed = await alice.request("GET", "/api/friends")
    assert len(listed.body["friends"]) == 4 and len(listed.body["outgoing"]) == 4
