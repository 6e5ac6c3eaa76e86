"""The lean WebSocket (gateway.transports.websocket) speaks RFC 6455 as Tornado's did:
handshake refusals as JSON, ping/pong, fragments, the close handshake, and the failures
that close the socket; idle, it holds no task."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct

import aiohttp
import pytest

from gateway.transports import websocket
from tests.waiting import eventually

DEADLINE = 10.0


class RawSocket:
    """A hand-driven WebSocket client: frames exactly as a test wants them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> None:
        self.writer.write(self.encode(opcode, payload, fin=fin, mask=mask))

    @staticmethod
    def encode(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
        head = bytes([(0x80 if fin else 0) | opcode])
        size = len(payload)
        bit = 0x80 if mask else 0
        if size < 126:
            head += bytes([bit | size])
        elif size < 1 << 16:
            head += bytes([bit | 126]) + struct.pack("!H", size)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", size)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            head += key
        return head + payload

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload); (-1, b"") at EOF."""
        async with asyncio.timeout(DEADLINE):
            try:
                first, second = await self.reader.readexactly(2)
            except asyncio.IncompleteReadError:
                return -1, b""
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return first & 0x0F, await self.reader.readexactly(size)

    async def until(self, opcode: int) -> bytes:
        while True:
            got, payload = await self.frame()
            if got in (opcode, -1):
                assert got == opcode, f"the server closed before opcode {opcode}"
                return payload

    async def drop(self) -> None:
        """Close the connection at once (unsent frames too), and wait until it is."""
        self.writer.transport.abort()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def closed(self) -> bool:
        """The server closed the TCP connection (after whatever it still sent)."""
        async with asyncio.timeout(DEADLINE):
            while await self.reader.read(4096):
                pass
        return True


async def open_raw(
    base: str, token: str, path: str = "/api/events/ws", *, receive_buffer: int = 0
) -> RawSocket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer:  # set before connecting: it bounds the window the server sees
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    except OSError:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    async with asyncio.timeout(DEADLINE):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    sock = RawSocket(reader, writer)
    assert json.loads(await sock.until(0x1))["type"] == "ready"
    return sock


@pytest.fixture
async def raw(pair, stack):
    _, bob = pair
    sock = await open_raw(stack.urls[0], bob.token)
    yield sock
    await sock.drop()  # at once, even with frames the server never read


async def test_ping_is_answered_with_its_payload(raw):
    raw.send(0x9, b"are you there")
    assert await raw.until(0xA) == b"are you there"


async def test_a_fragmented_send_is_one_message(pair, raw):
    alice_id = pair[0].user_id
    text = json.dumps({"type": "send", "to": alice_id, "body": "in parts", "client_id": "f1"})
    raw.send(0x1, text[:10].encode(), fin=False)
    raw.send(0x9, b"between")  # a control frame may come between fragments
    raw.send(0x0, text[10:30].encode(), fin=False)
    raw.send(0x0, text[30:].encode())
    assert await raw.until(0xA) == b"between"
    answer = json.loads(await raw.until(0x1))
    while answer["type"] not in ("sent", "send_failed"):
        answer = json.loads(await raw.until(0x1))
    assert (answer["type"], answer["client_id"], answer["status"]) == ("sent", "f1", 201)


async def test_frames_are_read_whole_however_their_bytes_arrive(pair, raw):
    """Several frames in one write, and a frame cut in two: its second part is written once
    the server has answered the ping written with its first, so it comes in a later read."""
    alice_id = pair[0].user_id

    def send(n: int) -> bytes:
        text = json.dumps({"type": "send", "to": alice_id, "body": f"b{n}", "client_id": f"c{n}"})
        return raw.encode(0x1, text.encode())

    cut = send(3)
    raw.writer.write(send(1) + send(2) + raw.encode(0x9, b"cut") + cut[:5])
    assert await raw.until(0xA) == b"cut"
    raw.writer.write(cut[5:])
    answers = []
    while len(answers) < 3:
        frame = json.loads(await raw.until(0x1))
        if frame["type"] in ("sent", "send_failed"):
            answers.append((frame["client_id"], frame["status"], frame["message"]["body"]))
    assert answers == [("c1", 201, "b1"), ("c2", 201, "b2"), ("c3", 201, "b3")]


async def test_the_clients_close_is_echoed_and_the_connection_ends(raw, stack):
    raw.send(0x8, struct.pack("!H", 1000) + b"bye")
    assert struct.unpack("!H", (await raw.until(0x8))[:2])[0] == 1000
    assert await raw.closed()
    await eventually(lambda: stack.gateways[0].services.connections.held == 0)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([(0x1, b'{"type": "send"}', False)], 1002),  # unmasked
        ([(0x0, b"stray continuation", True)], 1002),
        ([(0x3, b"reserved opcode", True)], 1002),
        ([(0x1, b'{"a": "\xff\xfe"}', True)], 1007),  # text that is not UTF-8
        ([(0x1, b"x" * 70_000, True)], 1009),  # over LONGTAIL_MAX_REQUEST_BYTES
        ([(0x8, b"\x03", True)], 1002),  # a close code cut in half
        ([(0x8, struct.pack("!H", 1005), True)], 1002),  # a code never sent on the wire
        ([(0x8, struct.pack("!H", 1000) + b"\xff", True)], 1007),  # a reason not UTF-8
    ],
    ids=[
        "unmasked",
        "stray-continuation",
        "reserved-opcode",
        "bad-utf8",
        "too-big",
        "short-close",
        "reserved-close-code",
        "bad-close-reason",
    ],
)
async def test_protocol_violations_close_with_their_code(raw, stack, frames, code):
    for opcode, payload, mask in frames:
        raw.send(opcode, payload, mask=mask)
    assert struct.unpack("!H", (await raw.until(0x8))[:2])[0] == code
    assert await raw.closed()
    await eventually(lambda: stack.gateways[0].services.connections.held == 0)


async def test_endless_empty_fragments_are_a_message_too_big(raw, stack):
    """Each fragment counts a byte at least: a client cannot grow a message forever."""
    services = stack.gateways[0].services
    services.settings = services.settings.with_(max_request_bytes=2048)
    raw.send(0x1, b"", fin=False)
    for _ in range(3000):
        raw.send(0x0, b"", fin=False)
    assert struct.unpack("!H", (await raw.until(0x8))[:2])[0] == 1009
    assert await raw.closed()
    await eventually(lambda: services.connections.held == 0)


async def test_a_socket_gone_before_its_woken_step_runs_is_released(raw, stack):
    """The connection closes in the same turn of the loop that woke the socket (its
    heartbeat timer, an event): the step, cancelled before it ever ran, never runs its
    own clean-up, so the socket must not stay held, subscribed and counted."""
    gateway = stack.gateways[0]
    await eventually(lambda: len(gateway.sockets) == 1)
    (held,) = gateway.sockets
    held._drop()  # closes the stream; its close callback (_gone) runs on the next turn,
    held._wake()  # after this step has been started, and before it runs
    await eventually(lambda: gateway.services.connections.held == 0)
    assert not gateway.sockets


async def test_nothing_follows_the_servers_close_frame(pair, stack):
    """After our close (here: a logout), a ping gets no pong: nothing may follow a close."""
    _, bob = pair
    sock = await open_raw(stack.urls[0], bob.token)
    try:
        assert (await bob.request("POST", "/api/logout")).status in (200, 204)
        closing = await sock.until(0x8)
        assert struct.unpack("!H", closing[:2])[0] == 4401
        sock.send(0x9, b"still there?")
        sock.send(0x8, closing[:2])  # the client's answer ends the handshake
        frames = []
        while (frame := await sock.frame())[0] != -1:
            frames.append(frame)
        assert frames == []
    finally:
        await sock.drop()


async def test_a_client_that_sends_without_reading_is_dropped(pair, stack, monkeypatch):
    """Pings are answered at once: one that never reads its pongs must not grow the
    gateway's write buffer without bound."""
    monkeypatch.setattr(websocket, "MAX_WRITE_BUFFER", 64 * 1024)
    _, bob = pair
    services = stack.gateways[0].services
    # No heartbeat comes to end it: the client is busy pinging, not silent.
    services.settings = services.settings.with_(heartbeat=60)
    sock = await open_raw(stack.urls[0], bob.token, receive_buffer=4096)

    async def flood() -> None:
        while True:
            for _ in range(200):
                sock.send(0x9, b"p" * 120)
            await sock.writer.drain()

    flooding = asyncio.create_task(flood())
    try:
        await eventually(lambda: services.connections.held == 0, deadline=DEADLINE)
        assert services.metrics.closed.labels("slow_consumer")._value.get() == 1
    finally:
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
        await sock.drop()  # what is still unsent goes too


async def test_an_idle_socket_holds_no_task(raw, stack):
    await eventually(lambda: stack.gateways[0].services.connections.held == 1)
    names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
    assert not [n for n in names if "Held" in n or "WebSocket" in n], names


async def test_a_client_that_stops_answering_pings_is_dropped(pair, stack):
    _, bob = pair
    gateway = stack.gateways[0]
    gateway.services.settings = gateway.services.settings.with_(heartbeat=0.2)
    sock = await open_raw(stack.urls[0], bob.token)
    try:
        # Never answers: the first beat pings, the next finds no pong and drops it.
        assert await sock.until(0x9) == b""
        assert await sock.closed()
        await eventually(lambda: gateway.services.connections.held == 0)
    finally:
        await sock.drop()


async def test_handshake_refusals_are_json(pair, stack, http):
    _, bob = pair
    url = stack.urls[0] + "/api/events/ws"
    base = {**bob.headers(), "Upgrade": "websocket", "Connection": "Upgrade"}
    cases = [
        ({**bob.headers()}, 400, "websocket_required"),
        ({**base, "Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "a2V5"}, 426, None),
        ({**base, "Sec-WebSocket-Version": "13"}, 400, "websocket_required"),
        ({**base, "Connection": "keep-alive", "Sec-WebSocket-Version": "13"}, 400, None),
    ]
    for headers, status, code in cases:
        async with http.get(url, headers=headers) as resp:
            assert resp.status == status, headers
            body = await resp.json()
            assert code is None or body["error"]["code"] == code
            if status == 426:
                assert resp.headers["Sec-WebSocket-Version"] == "13"
    async with http.post(url, headers=bob.headers()) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_a_cursor_ahead_closes_with_4400_after_the_upgrade(pair, stack, http):
    """A browser never sees a refused handshake's status: the reason comes as a close."""
    _, bob = pair
    url = stack.urls[0].replace("http", "ws") + f"/api/events/ws?cursor={bob.cursor + 99}"
    async with http.ws_connect(url, headers={**bob.headers(), "Origin": stack.urls[0]}) as ws:
        msg = await ws.receive(timeout=DEADLINE)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4400 and msg.extra == "cursor_ahead"


async def test_stop_closes_a_socket_whose_client_never_answers_our_close(pair, stack):
    """A WebSocket leaves Tornado's server when it upgrades (detach): the server's
    close_all_connections does not see it. stop() closes it itself, at once, rather
    than leaving it to CLOSE_WAIT (or the process's exit) when the client never
    answers the drain's close frame."""
    _, bob = pair
    gateway = stack.gateways[0]
    sock = await open_raw(stack.urls[0], bob.token)
    try:
        await eventually(lambda: gateway.hub.connection_count() == 1)
        await asyncio.wait_for(gateway.stop(), gateway.settings.drain_seconds + 2)
        stack.gateways.remove(gateway)  # already stopped
        closing = await sock.until(0x8)  # which the client never answers
        assert struct.unpack("!H", closing[:2])[0] == 1012
        async with asyncio.timeout(websocket.CLOSE_WAIT / 2):
            while await sock.reader.read(4096):
                pass
        await eventually(lambda: not gateway.sockets, what="the registry forgot it")
    finally:
        await sock.drop()
