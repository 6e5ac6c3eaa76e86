"""`GET /internal/sends/ws`: a gateway's batches of sends over one WebSocket.

Why: sends are chatcore's hottest command, and over `POST /internal/sends` each batch
paid an HTTP request's machinery on both sides. Measured alone on loopback, a round
trip with a batch of three sends cost about 460 µs of CPU as a keep-alive POST (aiohttp
to the lean path) and about 220 µs as a frame each way (docs/benchmarks.md). At light
load every send is a batch of its own, so that is paid per message.

Frames are binary, UTF-8 JSON. The gateway's is `POST /internal/sends`'s body with an
`id` and its `request_id`; chatcore answers `{"id", "status", ...}` with what that POST
would have answered: `"results"` (status 200) or `"error"`. Each frame runs in a task of
its own, so answers may overtake each other: the ids pair them. The shared secret is
checked once, at the upgrade.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress
from typing import Any

import tornado.websocket

from chatcore.internal import require_secret, send_batch
from chatcore.service import Chat
from longtail.errors import ApiError
from longtail.logs import begin_request, log_access
from longtail.web import MAX_JSON_DEPTH, json_object

log = logging.getLogger("longtail.chatcore")

PATH = "/internal/sends/ws"
# What a gateway may send in one frame (gateway.chatcore_socket.MAX_FRAME, the same):
# its largest batch of the longest messages, with room to spare.
MAX_FRAME = 64 * 1024 * 1024
# A gateway gone without a word (its host lost) would hold its socket open for good:
# pinged this often, a socket whose pong does not come in as long is closed.
PING_INTERVAL = 30.0


class SendSockets:
    """The open sockets and their batches under way, for shutdown: the batches answer,
    then the sockets close (an upgraded socket is the server's no more)."""

    def __init__(self) -> None:
        self.open: set[SendsSocket] = set()
        self.working: set[asyncio.Task[None]] = set()
        self.draining = False

    async def drain(self, timeout: float) -> None:
        """Refuse new batches (503: the gateway reconnects, to another chatcore if there
        is one), let those under way answer, then close every socket."""
        self.draining = True
        if self.working:
            await asyncio.wait(self.working, timeout=timeout)
        for socket in list(self.open):
            socket.close(1001, "chatcore is stopping")


class SendsSocket(tornado.websocket.WebSocketHandler):
    chat: Chat
    sockets: SendSockets

    def initialize(self, chat: Chat, sockets: SendSockets) -> None:
        self.chat = chat
        self.sockets = sockets

    @property
    def max_message_size(self) -> int:
        return MAX_FRAME

    @property
    def ping_interval(self) -> float:
        return PING_INTERVAL

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """The upgrade, for a caller with the shared secret; a JSON 401 otherwise."""
        try:
            require_secret(self.chat, self.request.headers.get("Authorization", ""))
        except ApiError as exc:
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps(exc.body(), separators=(",", ":")))
            return
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        self.sockets.open.add(self)

    def on_close(self) -> None:
        """Batches under way are stored all the same: the gateway answered their senders
        with a 503, and their retries find them by client_id."""
        self.sockets.open.discard(self)

    def on_message(self, message: str | bytes) -> None:
        task = asyncio.ensure_future(self._answer(message, time.time()))
        self.sockets.working.add(task)
        task.add_done_callback(self.sockets.working.discard)

    async def _answer(self, raw: str | bytes, started: float) -> None:
        frame_id: Any = None
        try:
            # As deep as POST /internal/sends's body may nest.
            body = json_object(raw, MAX_JSON_DEPTH + 3)
            frame_id = body.get("id")
            request_id = body.get("request_id")
            begin_request(request_id if isinstance(request_id, str) else None)
            if self.sockets.draining:
                raise ApiError(
                    503,
                    "chatcore_stopping",
                    "This chat server is stopping; try again.",
                    headers={"Retry-After": "1"},
                )
            answer: dict[str, Any] = {"status": 200, **await send_batch(self.chat, body)}
        except ApiError as exc:
            log.info("WS %s -> %d %s", PATH, exc.status, exc.code)
            answer = {"status": exc.status, **exc.body()}
        except Exception:
            log.exception("Uncaught exception WS %s", PATH)
            error = {"code": "internal_error", "message": "Something went wrong on our side."}
            answer = {"status": 500, "error": error}
        # ASCII: whatever a message holds, its answer encodes (a lone surrogate, escaped).
        frame = json.dumps({"id": frame_id, **answer}, separators=(",", ":"))
        with suppress(tornado.websocket.WebSocketClosedError):  # gone: see on_close
            await self.write_message(frame.encode(), binary=True)
        log_access(answer["status"], "WS", PATH, self.request.remote_ip, time.time() - started)
