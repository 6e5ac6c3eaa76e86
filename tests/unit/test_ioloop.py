"""longtail.ioloop: a read that stops and restarts keeps its registration, and bytes
that come while nobody reads stay in the kernel, as with Tornado's own loop."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from tornado.iostream import IOStream

from longtail import ioloop
from tests.waiting import eventually


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    yield ours, peer
    ours.close()
    peer.close()


def in_kernel(sock: socket.socket) -> bytes:
    """What the kernel holds for `sock`, unread by anyone (b"" if nothing)."""
    try:
        return sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


async def read_while_it_comes(
    stream: IOStream, peer: socket.socket, sent: bytes, size: int
) -> bytes:
    """Read `size` bytes of `sent`, the read asked for (the socket registered) before the
    bytes come, the way a server waits for a request."""
    reading = stream.read_bytes(size)
    peer.sendall(sent)
    return await reading


async def test_a_read_that_stops_and_starts_again_stays_registered(sockets):
    loop = ioloop.install()
    ours, peer = sockets
    stream = IOStream(ours)
    # The rest waits in Tornado's buffer, and nobody reads for a moment.
    assert await read_while_it_comes(stream, peer, b"headbody", 2) == b"he"
    assert ours.fileno() in loop.readers
    assert await stream.read_bytes(6) == b"adbody"
    assert ours.fileno() in loop.readers
    stream.close()
    assert ours.fileno() not in loop.readers and ours.fileno() not in loop.handlers


async def test_bytes_that_come_while_nobody_reads_stay_in_the_kernel(sockets):
    loop = ioloop.install()
    ours, peer = sockets
    stream = IOStream(ours)
    assert await read_while_it_comes(stream, peer, b"AB", 1) == b"A"
    peer.sendall(b"C")
    # The socket turned readable unasked: its reader goes, and Tornado read nothing.
    await eventually(lambda: ours.fileno() not in loop.readers, what="the reader dropped")
    assert in_kernel(ours) == b"C"
    assert await stream.read_bytes(2) == b"BC"
    peer.sendall(b"D")
    assert await stream.read_bytes(1) == b"D"
    stream.close()


async def test_install_refuses_a_loop_tornado_already_runs(sockets):
    IOStream(sockets[0]).close()  # makes Tornado's plain loop current on this asyncio loop
    with pytest.raises(RuntimeError):
        ioloop.install()
