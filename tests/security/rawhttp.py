"""Raw HTTP/1.1 over asyncio streams: for requests no well-behaved client would send."""

from __future__ import annotations

import asyncio
import re
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")


@dataclass
class Exchange:
    """Everything the server wrote back, and whether it closed the connection."""

    raw: bytes
    closed: bool  # the server closed (EOF or reset) rather than us giving up
    reset: bool = False

    @property
    def statuses(self) -> list[int]:
        """The status of every response in the bytes, in order (more than one: pipelined
        or smuggled requests were answered)."""
        return [int(s) for s in STATUS_LINE.findall(self.raw)]


async def exchange(base: str, request: bytes, *, deadline: float = 5.0) -> Exchange:
    """Write `request` as is to the host of `base`, read until the server closes."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    got = bytearray()
    closed = reset = False
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    try:
        writer.write(request)
        await writer.drain()
        while (left := end - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        closed = reset = True
    finally:
        writer.close()
        with suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()
    return Exchange(bytes(got), closed, reset)


def request(
    method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> bytes:
    """One request, headers in the given order and spelling (duplicates kept)."""
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
