"""The gateway's WebSocket to chatcore, for its batches of sends (chatcore.sends_socket).

Why: over `POST /internal/sends` every batch paid an HTTP request's machinery in both
processes, about twice a frame each way's CPU (docs/benchmarks.md), and at light load a
batch is one send.

One socket, opened by the first batch and again by the first after it dropped. A reader
task pairs each answer with its batch by id, so a socket chatcore closes (it stopped, or
is draining: it answers 503, then closes) is seen at once, and the next batch opens a new
one, to another chatcore if there is one. A batch without an answer in time drops the
socket (`drop`): a slow chatcore and one gone without a word look alike, and a socket
to a gone one would fail every batch after. A chatcore that refuses the upgrade (an
older version without the route, mid-upgrade) raises Refused: the caller posts instead.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

import aiohttp

from longtail.logs import current_request_id

log = logging.getLogger("longtail.gateway.chatcore")

PATH = "/internal/sends/ws"
# chatcore's answers to a batch of MAX_SEND_BATCH long messages fit, with room to spare;
# chatcore.sends_socket allows the same each way.
MAX_FRAME = 64 * 1024 * 1024
# A dropped socket's closing handshake waits this long for chatcore's close frame.
CLOSE_TIMEOUT = aiohttp.ClientWSTimeout(ws_close=1.0)


class Refused(Exception):
    """chatcore answered the upgrade with an HTTP status instead of a WebSocket."""

    def __init__(self, status: int) -> None:
        super().__init__(f"chatcore refused the sends socket with {status}")
        self.status = status


class _Connection:
    """One open socket and the batches waiting for their answers on it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read(), name="chatcore-sends-socket")

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type is not aiohttp.WSMsgType.BINARY:
                    continue
                answer = json.loads(message.data)
                future = self.waiting.get(answer.get("id"))
                if future is not None and not future.done():
                    future.set_result(answer)
        except Exception:
            log.exception("chatcore's sends socket sent something unreadable")
            await self.ws.close()
        finally:
            gone = ConnectionResetError("chatcore's sends socket closed")
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(gone)

    @property
    def open(self) -> bool:
        return not self.ws.closed and not self.reader.done()

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait([self.reader])


class ChatcoreSocket:
    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._ids = itertools.count(1)
        self._closing: set[asyncio.Task[None]] = set()  # dropped sockets' handshakes

    async def call(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, Any]:
        """chatcore's answer to one batch: `{"status", "results"}` or `{"status", "error"}`.

        Raises Refused (post it instead), or what a failed socket raises (TimeoutError
        under the caller's deadline, aiohttp.ClientError, OSError).
        """
        connection = await self._open(session)
        frame_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        connection.waiting[frame_id] = future
        try:
            frame = {"id": frame_id, "request_id": current_request_id(), **body}
            # ASCII, as aiohttp's POST bodies: a lone surrogate a browser sent travels
            # escaped, for chatcore to refuse or store, never to fail the batch here.
            await connection.ws.send_bytes(json.dumps(frame, separators=(",", ":")).encode())
            return await future
        finally:
            del connection.waiting[frame_id]

    async def _open(self, session: aiohttp.ClientSession) -> _Connection:
        async with self._connecting:
            connection = self._connection
            if connection is not None and connection.open:
                return connection
            try:
                ws = await session.ws_connect(
                    self._url + PATH, max_msg_size=MAX_FRAME, timeout=CLOSE_TIMEOUT
                )
            except aiohttp.WSServerHandshakeError as exc:
                raise Refused(exc.status) from None
            self._connection = connection = _Connection(ws)
            return connection

    def drop(self) -> None:
        """Stop using the socket: the next batch opens a new one. It closes meanwhile."""
        connection, self._connection = self._connection, None
        if connection is not None:
            task = asyncio.create_task(connection.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        self.drop()
        if self._closing:
            await asyncio.wait(self._closing)
