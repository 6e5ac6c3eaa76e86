"""Held GET polls take the lean path (gateway.transports.lean): the same answers as the
handler path, and every way out deregisters the poll."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from tornado.httputil import HTTPHeaders

from gateway.transports.lean import HeldPoll, _shed
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


def test_shedding_keeps_only_connection_on_the_same_headers_object() -> None:
    browser = {"Host": "chat.example", "Cookie": "a=1; b=2", "User-Agent": "Mozilla/5.0"}
    headers = HTTPHeaders({**browser, "Connection": "keep-alive"})
    _shed(headers)
    assert list(headers.get_all()) == [("Connection", "keep-alive")]
    assert "Cookie" not in headers and headers.get("Host") is None
    bare = HTTPHeaders(browser)
    _shed(bare)
    assert list(bare.get_all()) == []
    bare.add("Connection", "close")  # still a working HTTPHeaders
    assert bare["Connection"] == "close"


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


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, Any]:
    """One HTTP/1.1 answer with a Content-Length body, from a raw connection."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status = int(head.split(" ", 2)[1])
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


async def test_a_poll_answers_once_when_its_timeout_passes_during_a_catch_up(pair, stack):
    """A wake-up during a slow catch-up (Redis failing over) must not start a second
    step: both would answer, and the second answer, left on the kept-alive
    connection, would be read by the next request on it: another user's, behind a
    proxy that pools its upstream connections."""
    alice, bob = pair
    gateway = stack.gateways[1]
    services = gateway.services
    cursor = bob.cursor + 2  # befriended
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)

    def get(path: str) -> None:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {bob.token}\r\n\r\n".encode()
        )

    get(f"/api/events?cursor={cursor}&timeout=1")
    await eventually(lambda: services.connections.held == 1)
    started = asyncio.get_running_loop().time()
    release = asyncio.Event()
    stalled: list[int] = []
    catch_up = services.catchup.after

    async def slow_after(user_id: int, after: int) -> Any:
        stalled.append(after)
        await release.wait()
        return await catch_up(user_id, after)

    services.catchup.after = slow_after  # type: ignore[method-assign]
    (mailbox,) = gateway.hub.mailboxes(bob.user_id)
    mailbox.resync()  # as after a reconnect: the poll re-reads storage, which stalls
    await eventually(lambda: stalled == [cursor])
    assert (await alice.send(bob, "during the stall")).status == 201
    # The poll's timeout passes while its catch-up is stuck.
    await eventually(lambda: asyncio.get_running_loop().time() > started + 1.5)
    release.set()

    status, first = await asyncio.wait_for(read_answer(reader), 10)
    assert status == 200
    assert [e["message"]["body"] for e in first["events"]] == ["during the stall"]
    # The next request on the connection gets its own answer, not a second one of the poll.
    get("/api/me")
    status, second = await asyncio.wait_for(read_answer(reader), 10)
    assert (status, second) == (200, {"id": bob.user_id, "username": bob.username})
    writer.close()


def lean_steps() -> list[asyncio.Task[Any]]:
    """The held requests' short tasks (HeldPoll._run) still running."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "HeldPoll._run" and not t.done()
    ]


UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


@pytest.mark.parametrize(
    ("path", "extra", "slow"),
    [
        ("/api/events?cursor={cursor}&timeout=30", "", "auth"),
        ("/api/events/jsonp?callback=cb&cursor={cursor}&timeout=30", "", "auth"),
        ("/api/events/stream?cursor={cursor}", "", "auth"),
        ("/api/events/stream", "", "head"),
        ("/api/events/ws?cursor={cursor}", UPGRADE, "auth"),
        ("/api/events/ws", UPGRADE, "head"),
    ],
    ids=["poll", "jsonp", "sse", "sse-no-cursor", "websocket", "websocket-no-cursor"],
)
async def test_a_client_that_leaves_while_its_request_starts_is_never_held(
    pair, stack, monkeypatch, caplog, path, extra, slow
):
    """Gone while authentication (or the current cursor's lookup) is still out: the
    request ends there, and is never registered, counted or held until its timeout.
    (Streams and WebSockets also cancel their starting task when the client goes.)"""
    _, bob = pair
    caplog.set_level(logging.INFO, logger="tornado.access")
    gateway = stack.gateways[0]
    services = gateway.services
    entered = asyncio.Event()
    release = asyncio.Event()
    ended: list[bool] = []  # the lookup answered, or was cancelled with its request

    def stalled(lookup: Any) -> Any:
        async def slow_lookup(*args: Any) -> Any:
            entered.set()
            try:
                await release.wait()
                return await lookup(*args)
            finally:
                ended.append(True)

        return slow_lookup

    gone: list[bool] = []
    noticed = HeldPoll._gone

    def record_gone(self: HeldPoll) -> None:
        gone.append(True)
        noticed(self)

    monkeypatch.setattr(HeldPoll, "_gone", record_gone)
    if slow == "auth":
        monkeypatch.setattr(services.auth, "user", stalled(services.auth.user))
    else:
        monkeypatch.setattr(services.catchup, "head", stalled(services.catchup.head))
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    target = path.format(cursor=bob.cursor + 2)  # befriended
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {bob.token}\r\n"
        f"{extra}\r\n".encode()
    )
    await asyncio.wait_for(entered.wait(), 5)
    writer.close()  # the client leaves while its request is being started
    await writer.wait_closed()
    # The gateway notices (Tornado reads the EOF) before the lookup answers.
    await eventually(lambda: gone, what="the gateway noticed the client left")
    release.set()
    await eventually(lambda: ended and not lean_steps(), what="the start ended")
    assert services.connections.held == 0
    assert gateway.hub.connection_count() == 0
    for label in ("longpoll", "jsonp", "sse", "websocket"):
        assert services.metrics.held.labels(label)._value.get() == 0
    assert services.metrics.pending_polls._value.get() == 0
    if "timeout=" in path:  # a poll logs its usual line for a client that left
        lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
        assert any(line.startswith(f"200 GET {target.split('&')[0]}") for line in lines), lines
