"""Reading every streaming transport's framing from Python, as a browser script would."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

IFRAME_CALL = re.compile(rb"<script>p\((.*)\)</script>")


@dataclass
class Received:
    """Events (they have a seq) and control messages (ready, heartbeat, close)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # SSE `id:` lines
    status: int = 0
    headers: Any = None
    raw: bytearray = field(default_factory=bytearray)

    def add(self, item: dict[str, Any]) -> None:
        (self.events if "seq" in item else self.controls).append(item)

    def kinds(self) -> list[str]:
        return [c["type"] for c in self.controls]


Until = Callable[[Received], bool]


def parse_line(kind: str, line: bytes, got: Received, sse_event: list[str]) -> None:
    text = line.rstrip(b"\r\n")
    if kind == "sse":
        if text.startswith(b"id: "):
            got.ids.append(int(text[4:]))
        elif text.startswith(b"event: "):
            sse_event[0] = text[7:].decode()
        elif text.startswith(b"data: "):
            got.add(json.loads(text[6:]))
        elif not text:
            sse_event[0] = "message"
    elif kind in ("xhr", "multipart"):
        if text.startswith((b"{", b"[")):
            got.add(json.loads(text))
    elif kind == "iframe":
        match = IFRAME_CALL.search(text)
        if match:
            got.add(json.loads(match.group(1)))


async def read_stream(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    kind: str,
    until: Until,
    deadline: float = 10,
) -> Received:
    """Read an HTTP stream until `until(received)` holds, the stream ends, or the deadline."""
    got = Received()
    sse_event = ["message"]
    timeout = aiohttp.ClientTimeout(total=deadline)
    async with http.get(url, headers=headers, timeout=timeout) as resp:
        got.status, got.headers = resp.status, resp.headers
        if resp.status != 200:
            got.raw += await resp.read()
            return got
        async for line in resp.content:
            got.raw += line
            parse_line(kind, line, got, sse_event)
            if until(got):
                break
    return got


async def read_ws(
    ws: aiohttp.ClientWebSocketResponse, until: Until, deadline: float = 10
) -> Received:
    got = Received()
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not until(got):
        msg = await ws.receive(timeout=max(0.01, end - loop.time()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        got.add(json.loads(msg.data))
    return got


def count(n: int) -> Until:
    return lambda got: len(got.events) >= n
