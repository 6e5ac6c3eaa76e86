"""Held GET polls take the lean path (gateway.transports.lean): the same answers as the
handler path, and every way out deregisters the poll."""

from __future__ import annotations

import asyncio

from tests.waiting import eventually


async def test_a_poll_answer_carries_the_handler_paths_headers(pair, stack, http):
    _, bob = pair
    url = stack.urls[0] + "/api/events?timeout=0"  # no cursor: the current one, at once
    async with http.get(url, headers=bob.headers({"X-Request-ID": "req-42"})) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Request-ID"] == "req-42"
        assert resp.headers["Server"].startswith("TornadoServer/")
        etag = resp.headers["Etag"]
        assert await resp.json() == {"events": [], "cursor": bob.cursor + 2}  # befriended
    # RequestHandler.finish answered a matching If-None-Match with a 304; so do we.
    async with http.get(url, headers=bob.headers({"If-None-Match": etag})) as resp:
        assert resp.status == 304


async def test_other_methods_still_go_to_the_handlers(pair, stack, http):
    _, bob = pair
    for path in ("/api/events", "/api/events/jsonp?callback=cb"):
        async with http.post(stack.urls[0] + path, headers=bob.headers()) as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_errors_are_json_with_the_request_id(stack, http):
    url = stack.urls[0] + "/api/events?cursor=0&timeout=0"
    async with http.get(url, headers={"X-Request-ID": "req-7"}) as resp:
        assert resp.status == 401
        assert resp.headers["X-Request-ID"] == "req-7"
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_a_client_that_leaves_is_deregistered_at_once(pair, stack, http):
    _, bob = pair
    gateway = stack.gateways[0]
    services = gateway.services
    url = stack.urls[0] + f"/api/events?cursor={bob.cursor + 2}&timeout=30"
    poll = asyncio.create_task(http.get(url, headers=bob.headers()))
    await eventually(lambda: services.connections.held == 1)
    assert gateway.hub.connection_count() == 1
    poll.cancel()
    await asyncio.gather(poll, return_exceptions=True)
    await eventually(lambda: services.connections.held == 0)
    assert gateway.hub.connection_count() == 0
    held = services.metrics.held.labels("longpoll")._value.get()
    assert held == 0 and services.metrics.pending_polls._value.get() == 0


async def test_keep_alive_choices_survive_the_shed_headers(pair, stack):
    """A held poll drops its request headers but Connection, which Tornado still reads
    when it answers: HTTP/1.1 `close` and HTTP/1.0 `keep-alive` are honoured."""
    _, bob = pair
    host, port = stack.urls[0].removeprefix("http://").rsplit(":", 1)
    auth = bob.headers()["Authorization"]
    path = f"/api/events?cursor={bob.cursor + 2}&timeout=0.2"
    for version, connection, expected in (
        ("1.1", "close", b"\r\nConnection: close\r\n"),
        ("1.0", "keep-alive", b"\r\nConnection: Keep-Alive\r\n"),
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET {path} HTTP/{version}\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
            f"Connection: {connection}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200")
        assert expected in head
