"""POST /api/messages without a RequestHandler: behind every message sent over SSE,
long-polls or any transport but the WebSocket.

Why: a message sent over POST cost the sending gateway about twice what a WebSocket
`send` frame did, and Tornado's handler machinery was the largest part of the
difference (issue 5's profile). The contract is the handler path's, answer for answer:
the same checks in the same order (gateway.base.authenticate and json_body), the same
statuses, JSON errors, headers, piggybacked events, access log line and metrics; the
sending itself is gateway.sending's, shared with WebSocket sends.
"""

from __future__ import annotations

from tornado import httputil
from tornado.http1connection import HTTP1Connection

from gateway.auth import request_token
from gateway.base import Services, authenticate, json_body, piggybacked
from gateway.lean_request import LeanRequest
from gateway.sending import send_posted


class LeanSend(LeanRequest):
    """One POST of a message, from its request to its answer."""

    __slots__ = ("_chunks", "_size")
    method = "POST"

    def __init__(self, services: Services, conn: HTTP1Connection) -> None:
        super().__init__(services, conn)
        self._chunks: list[bytes] = []
        self._size = 0

    def data_received(self, chunk: bytes) -> None:
        """Kept up to the limit and counted past it (the 413 comes once it is all in)."""
        self._size += len(chunk)
        if self._size <= self.services.settings.max_request_bytes:
            self._chunks.append(chunk)

    def finish(self) -> None:
        self.services.inflight.start(self._respond())

    def on_connection_close(self) -> None:
        """Gone while still sending its request: nothing was started. Gone later: the
        message is sent all the same, and its answer dropped (the client retries with
        the same client_id and gets the stored message)."""

    async def answer(self, request: httputil.HTTPServerRequest) -> tuple[int, bytes]:
        services = self.services
        user, piggyback = await authenticate(services, request, request_token(request))
        status, answer = await send_posted(
            services,
            user,
            lambda: json_body(request, self._chunks, self._size, services.settings),
        )
        if piggyback is not None:
            answer = await piggybacked(services, user, piggyback, answer)
        return status, answer
