"""CSRF: a cross-site page can make the browser POST with the session cookie, but only
with a form's content types (or none); the gateway refuses those (415) before doing
anything, while the same cookie session with JSON works."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.client import Client

PASSWORD = "password12"

# What an HTML form or a no-cors fetch/sendBeacon can send without a CORS preflight.
FORM_TYPES = {
    "urlencoded": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data; boundary=xyz",
    "text-plain": "text/plain",
    "text-plain-charset": "text/plain; charset=utf-8",
    "text-plain-json-param": "text/plain; application/json",
    "none": None,
}


def form_body(content_type: str | None, fields: dict) -> bytes:
    """The body a form would send; for text/plain, the classic JSON-lookalike trick."""
    if content_type is None or content_type.startswith("text/plain"):
        return json.dumps(fields).encode()
    if content_type.startswith("multipart/"):
        parts = [
            f'--xyz\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        ]
        return ("".join(parts) + "--xyz--\r\n").encode()
    return "&".join(f"{k}={v}" for k, v in fields.items()).encode()


@dataclass
class Browser:
    """alice logged in by cookie only, in a browser-like jar; bob is her friend."""

    http: aiohttp.ClientSession
    alice: Client  # no token: the cookie authenticates
    alice_id: int
    bob: Client
    room: int

    async def form_post(self, path: str, content_type: str | None, fields: dict) -> int:
        headers = {"Content-Type": content_type} if content_type else {}
        data = form_body(content_type, fields)
        # Without skip_auto_headers aiohttp would label the bytes application/octet-stream.
        skip = () if content_type else ("Content-Type",)
        async with self.http.post(
            self.alice.base + path, data=data, headers=headers, skip_auto_headers=skip
        ) as resp:
            await resp.read()
            return resp.status


@pytest.fixture
async def browser(stack, new_client) -> AsyncIterator[Browser]:
    username = f"alice{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        alice = Client(http, stack.urls[0])
        await alice.request("POST", "/api/register", {"username": username, "password": PASSWORD})
        login = await alice.request(
            "POST", "/api/login", {"username": username, "password": PASSWORD}
        )
        assert login.status == 200 and alice.token is None
        bob = await new_client(1).signup(f"bob{uuid.uuid4().hex[:6]}")
        assert (
            await alice.request("POST", "/api/friends", {"username": bob.username})
        ).status == 201
        assert (await bob.request("POST", "/api/friends", {"username": username})).status == 201
        room = await alice.request("POST", "/api/rooms", {"name": "r", "members": [bob.user_id]})
        assert room.status == 201
        bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
        yield Browser(http, alice, login.body["id"], bob, room.body["id"])


def writes(b: Browser) -> list[tuple[str, dict]]:
    stranger = f"nobody{uuid.uuid4().hex[:6]}"
    return [
        ("/api/messages", {"to": b.bob.user_id, "body": "forged", "client_id": "csrf-1"}),
        ("/api/messages", {"conversation_id": b.room, "body": "forged", "client_id": "csrf-2"}),
        ("/api/friends", {"username": stranger}),
        ("/api/rooms", {"name": "forged room", "members": [b.bob.user_id]}),
        (f"/api/rooms/{b.room}/members", {"user_id": b.bob.user_id}),
        (f"/api/conversations/{b.room}/read", {"message_id": 1}),
        ("/api/typing", {"conversation_id": b.room}),
        ("/api/register", {"username": stranger, "password": PASSWORD}),
        ("/api/login", {"username": stranger, "password": PASSWORD}),
    ]


@pytest.mark.parametrize("kind", FORM_TYPES)
async def test_cookie_authenticated_form_posts_are_refused_and_change_nothing(kind, browser):
    content_type = FORM_TYPES[kind]
    before = await browser.alice.request("GET", "/api/conversations")
    for path, fields in writes(browser):
        status = await browser.form_post(path, content_type, fields)
        assert status == 415, (path, kind, status)
    # Nothing was stored or sent: bob heard nothing, alice's lists are as they were...
    assert await browser.bob.poll(timeout=0) == []
    assert (await browser.alice.request("GET", "/api/conversations")).body == before.body
    friends = (await browser.alice.request("GET", "/api/friends")).body
    assert friends["outgoing"] == [] and [f["id"] for f in friends["friends"]] == [
        browser.bob.user_id
    ]
    # ...and the forged registration never happened: the name is still free.
    name = writes(browser)[-1][1]["username"]
    free = await browser.bob.request(
        "POST", "/api/register", {"username": name, "password": PASSWORD}
    )
    assert free.status == 201


async def test_the_same_cookie_session_works_with_json(browser):
    sent = await browser.alice.request(
        "POST", "/api/messages", {"to": browser.bob.user_id, "body": "real", "client_id": "ok-1"}
    )
    assert sent.status == 201 and sent.body["message"]["sender"]["id"] == browser.alice_id
    assert [e["message"]["body"] for e in await browser.bob.poll(timeout=0)] == ["real"]


@pytest.mark.parametrize("action", ["logout", "leave"])
@pytest.mark.parametrize("kind", ["urlencoded", "text-plain"])
async def test_bodiless_writes_are_refused_to_forms_too(action, kind, browser):
    path = "/api/logout" if action == "logout" else f"/api/rooms/{browser.room}/leave"
    status = await browser.form_post(path, FORM_TYPES[kind], {"x": "y"})
    # Whatever the answer, the session and the membership must be intact...
    assert (await browser.alice.request("GET", "/api/me")).status == 200
    room = await browser.alice.request("GET", f"/api/rooms/{browser.room}")
    assert room.status == 200
    assert [e["type"] for e in await browser.bob.poll(timeout=0)] == []
    # ...because the form post was refused.
    assert status == 415
