"""Cross-site WebSocket hijacking: the browser sends the session cookie on a cross-site
WebSocket handshake (no CORS applies), so the Origin check is the whole defence."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.client import Client

Handshake = tuple[int, dict | None]  # (101 or the refusal's status, the first frame)


async def handshake(http: aiohttp.ClientSession, base: str, origin: str | None, **kw) -> Handshake:
    url = base.replace("http", "ws", 1) + "/api/events/ws?cursor=0"
    headers = {**kw.get("headers", {}), **({"Origin": origin} if origin is not None else {})}
    try:
        async with http.ws_connect(url, headers=headers) as ws:
            msg = await ws.receive(timeout=5)
            return 101, json.loads(msg.data)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status, None


@pytest.fixture
async def cookie_browser(stack) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser logged in by cookie: what a cross-site page would ride on."""
    username = f"wendy{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        anon = Client(http, stack.urls[0])
        await anon.request("POST", "/api/register", {"username": username, "password": "password1"})
        await anon.request("POST", "/api/login", {"username": username, "password": "password1"})
        yield http


def cross_site(base: str, other_gateway: str) -> list[str]:
    host = urlsplit(base).netloc
    return [
        "http://evil.example",
        "null",  # sandboxed iframes, file: pages
        other_gateway,  # another port is another origin
        f"http://{host}.evil.example",
        f"http://evil.example/{host}",
        f"http://evil.example?{host}",
        f"http://{host}@evil.example",
        f"http://evil.example#{host}",
        "",
    ]


async def test_cross_site_origins_are_refused_even_with_the_session_cookie(cookie_browser, stack):
    base = stack.urls[0]
    for origin in cross_site(base, stack.urls[1]):
        status, _ = await handshake(cookie_browser, base, origin)
        assert status == 403, origin


async def test_same_origin_is_accepted(cookie_browser, stack):
    for base in stack.urls:
        assert await handshake(cookie_browser, base, base) == (101, {"type": "ready", "cursor": 0})


async def test_a_handshake_without_origin_is_accepted(pair, stack, http):
    """Documented behaviour: no Origin header means a non-browser client (browsers always
    send one on WebSocket handshakes, so a cross-site page cannot get here); it still
    needs a valid session like any request."""
    _, bob = pair
    status, first = await handshake(http, stack.urls[0], None, headers=bob.headers())
    assert status == 101 and first["type"] == "ready"
    assert (await handshake(http, stack.urls[0], None))[0] == 401


@pytest.fixture
def allowed(stack):
    for gateway in stack.gateways:
        gateway.services.settings = gateway.services.settings.with_(
            allowed_origins=("https://app.example",)
        )
    return stack


LISTED = {
    "https://app.example": 101,
    "https://app.example/": 101,
    "http://app.example": 403,  # another scheme is another origin
    "https://app.example.evil.example": 403,
    "https://evil.example/https://app.example": 403,
    "https://app.example:8443": 403,
    "https://xapp.example": 403,
}


async def test_listed_origins_match_exactly(allowed, cookie_browser):
    answers = {o: (await handshake(cookie_browser, allowed.urls[0], o))[0] for o in LISTED}
    assert answers == LISTED
