"""A client that stops reading is cut off when its bounded mailbox fills, without the
gateway holding its backlog, and resumes from its cursor with nothing lost."""

from __future__ import annotations

import asyncio
import socket

from tests.client import messages
from tests.gateway.test_ops import sample, scrape
from tests.streams import count, read_stream
from tests.waiting import eventually

BODY = "x" * 3990
LIMIT = 2500  # sends: well past the 4 MiB the kernel may buffer for one socket


async def test_a_stream_that_stops_reading_is_cut_and_resumes_without_loss(pair, stack, http):
    alice, bob = pair
    gateway = stack.gateways[1]
    gateway.services.settings = gateway.services.settings.with_(mailbox_size=8)
    stack.gateways[0].services.settings = stack.gateways[0].services.settings.with_(
        sends_per_minute=10_000
    )
    start = (await bob.request("GET", "/api/events")).body["cursor"]
    host, port = stack.urls[1].removeprefix("http://").split(":")

    # A raw client with a tiny receive window: it reads up to `ready`, then nothing more.
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    request = (
        f"GET /api/events/stream?cursor={start} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {bob.token}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"event: ready" not in head:
        head += await loop.sock_recv(sock, 1024)
    await eventually(lambda: gateway.hub.connection_count() == 1, what="the stream is held")

    # Past what the kernel buffers, the gateway's writes stall, the mailbox fills, and
    # the connection must be cut.
    sent = 0
    try:
        while gateway.hub.connection_count() and sent < LIMIT:
            assert (await alice.send(bob, f"{sent} {BODY}")).status == 201
            sent += 1
        await eventually(lambda: gateway.hub.connection_count() == 0, what="the stream was cut")
    finally:
        sock.close()
    assert sent < LIMIT, "the slow consumer was never cut off"
    text = await scrape(http, stack.urls[1])
    assert sample(text, "longtail_stream_closes_total", reason="slow_consumer") == 1

    # It comes back from its cursor (nothing read past `start`) and gets everything.
    got = await read_stream(
        http,
        stack.urls[0] + f"/api/events/stream?cursor={start}",
        bob.headers(),
        "sse",
        count(sent),
        deadline=30,
    )
    assert [m.split(" ")[0] for m in messages(got.events)] == [str(i) for i in range(sent)]
