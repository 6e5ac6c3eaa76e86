"""Forwarded client addresses and schemes: believed from trusted proxies only."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from tornado.httputil import HTTPHeaders

from gateway.forwarded import TrustedProxies, client_address, client_scheme
from longtail.settings import Settings
from tests.waiting import eventually

PEER = "10.1.2.3"


def test_the_client_address_is_x_real_ip_else_the_last_forwarded_hop() -> None:
    both = HTTPHeaders({"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "198.51.100.1"})
    assert client_address(both, PEER) == "203.0.113.7"
    # The client may write its own X-Forwarded-For; the proxy appends what it saw.
    chain = HTTPHeaders({"X-Forwarded-For": "127.0.0.1, 198.51.100.1,2001:db8::5 "})
    assert client_address(chain, PEER) == "2001:db8::5"
    assert client_address(HTTPHeaders(), PEER) == PEER
    for garbage in ("localhost", "1.2.3.4.5", "", "203.0.113.7; drop"):
        assert client_address(HTTPHeaders({"X-Real-IP": garbage}), PEER) == PEER


def test_the_scheme_is_the_forwarded_one_if_http_or_https() -> None:
    assert client_scheme(HTTPHeaders({"X-Forwarded-Proto": "https"}), "http") == "https"
    assert client_scheme(HTTPHeaders({"X-Forwarded-Proto": "http, HTTPS"}), "http") == "https"
    assert client_scheme(HTTPHeaders({"X-Forwarded-Proto": "gopher"}), "http") == "http"
    assert client_scheme(HTTPHeaders(), "http") == "http"


def test_trusted_proxies_are_networks_or_anyone() -> None:
    loopback = TrustedProxies(Settings().trusted_proxies)
    assert "127.0.0.1" in loopback and "127.8.9.10" in loopback and "::1" in loopback
    assert "10.0.0.1" not in loopback and "::ffff:10.0.0.1" not in loopback
    private = TrustedProxies(["10.0.0.0/8", "fd00::/8"])
    assert "10.200.0.1" in private and "fd00::7" in private and "::ffff:10.0.0.1" in private
    assert "11.0.0.1" not in private and "not-an-address" not in private
    assert "198.51.100.1" in TrustedProxies(["*"])
    assert "198.51.100.1" not in TrustedProxies([])


@pytest.fixture(params=["trusted", "untrusted"])
def trust(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(settings: Settings, trust: str) -> Settings:
    """The suite's clients connect from 127.0.0.1: a trusted proxy, or not."""
    return settings.with_(
        trusted_proxies=Settings().trusted_proxies if trust == "trusted" else ("10.0.0.0/8",)
    )


async def test_the_per_address_cap_counts_forwarded_addresses_only_from_a_trusted_proxy(
    stack, new_client, trust
):
    gateway = stack.gateways[0]
    gateway.services.connections.per_ip = 1
    bob = await new_client(0).signup(f"bob{uuid.uuid4().hex[:6]}")
    cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    path = f"/api/events?cursor={cursor}&timeout=5"
    first = asyncio.create_task(bob.request("GET", path, headers={"X-Real-IP": "203.0.113.7"}))
    await eventually(lambda: gateway.services.connections.held == 1, what="one held")
    again = await bob.request("GET", path, headers={"X-Real-IP": "203.0.113.7"})
    assert again.status == 429 and again.error_code == "too_many_connections"
    other = asyncio.create_task(bob.request("GET", path, headers={"X-Real-IP": "203.0.113.8"}))
    if trust == "trusted":
        await eventually(lambda: gateway.services.connections.held == 2, what="two held")
    else:
        # Both came from 127.0.0.1: the header is the client's own claim.
        answer = await other
        assert answer.status == 429 and answer.error_code == "too_many_connections"
    gateway.hub.close_all("draining")
    await asyncio.gather(first, other)
    assert gateway.services.connections.held == 0


async def test_the_session_cookie_is_secure_when_a_trusted_proxy_says_https(
    stack, new_client, trust
):
    client = await new_client(0).signup(f"carol{uuid.uuid4().hex[:6]}")
    login = await client.request(
        "POST",
        "/api/login",
        {"username": client.username, "password": "correct horse"},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert login.status == 200
    cookie = login.headers["Set-Cookie"]
    assert ("Secure" in cookie) == (trust == "trusted")
    # The proxy's own scheme comes back for the next request on its connection.
    plain = await client.request(
        "POST", "/api/login", {"username": client.username, "password": "correct horse"}
    )
    assert "Secure" not in plain.headers["Set-Cookie"]
