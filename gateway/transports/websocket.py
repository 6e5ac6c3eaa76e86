"""WebSocket: GET /api/events/ws?cursor=, one JSON text frame per event.

Authentication, the handshake's headers, the Origin (same-origin, or
LONGTAIL_ALLOWED_ORIGINS) and the cursor's form are checked before the upgrade, each a
plain JSON 4xx. A cursor that turns out to be ahead of the user's events closes the socket
with code 4400 and the error code as reason (a browser never sees a refused handshake's
status). Control frames (`ready`, `heartbeat`, `close`) are JSON objects without a `seq`.

The client may send messages on the socket it already holds, the way a WebSocket chat
client expects to (and without an HTTP request per message, the costliest part of a
send, issue 5): `{"type": "send", "to" or "conversation_id", "body", "client_id"}`, the
body of `POST /api/messages` plus its type. Each is answered, in the order sent, by
`{"type": "sent", "client_id", "status", "message"}` or `{"type": "send_failed",
"client_id", "status", "error"}` with the status and body the POST would have had. A
frame that is not such an object gets `{"type": "error", "error"}`; the socket stays.

Why not Tornado's WebSocketHandler: a held socket spends nearly all its life idle, and on
that path an idle one kept about 22 KiB alive (the handler, its request, the protocol
object, a frame-reading task and the pump's task, each with its coroutine frames), over
twice DESIGN.md's 10 KiB. Here a socket is a HeldStream (gateway.transports.lean_stream:
the same request handling, limits, hub registration, heartbeats and maximum age as SSE)
that upgrades, then reads frames with callbacks on the IOStream and writes from short
steps: idle, it holds no task and no frame. The protocol is RFC 6455 without
extensions, as Tornado's was configured here: masked client frames, fragmentation,
ping/pong, the close handshake, a maximum message size (LONGTAIL_MAX_REQUEST_BYTES,
close 1009), UTF-8 text (close 1007); every other violation closes with 1002. Tornado's
heartbeat ping is kept: a client that answered nothing since the last one is gone.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError
from tornado.util import _websocket_mask  # Tornado's C unmasking, as its websocket uses
from tornado.websocket import WebSocketProtocol13

from gateway.auth import User
from gateway.base import GatewayHandler, Services
from gateway.feed import Feed
from gateway.sending import Outcome, send_messages
from gateway.transports.lean_stream import HeldStream
from gateway.transports.stream import control_json
from gateway.transports.timing import retry_after
from longtail.errors import ApiError
from longtail.logs import REQUEST_ID_HEADER
from longtail.web import json_object
from longtail.wire import Event

log = logging.getLogger("longtail.gateway.ws")

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_REQUEST = 4400
# Why the server ended a healthy socket; in every case the client resumes by cursor.
CLOSE_CODES = {
    "max_age": CLOSE_NORMAL,
    "draining": 1012,  # service restart: come back (to another gateway)
    "slow_consumer": CLOSE_TRY_AGAIN,
    "logged_out": 4401,  # the session ended: log in again
}
# Sends a socket may have waiting for their answers; past this a client that does not
# read them is refused (429) instead of growing the gateway's memory.
MAX_QUEUED_SENDS = 64
# After our close frame, how long the client has to answer with its own (RFC 6455
# 7.1.1) before the connection is dropped anyway: Tornado's figure.
CLOSE_WAIT = 5.0
# After failing a client that broke the protocol, how long it has to read our close.
FAIL_LINGER = 1.0
# What may wait in a socket's write buffer. A healthy client takes far less: its mailbox
# holds at most LONGTAIL_MAILBOX_SIZE events (256), and answers to its own frames are
# small. One that sends without reading (pings, refused frames: each answered at once)
# would otherwise grow the gateway's memory until its next heartbeat's write timed out.
MAX_WRITE_BUFFER = 4 * 1024 * 1024
# Close codes a client may send (RFC 6455 7.4: 1004-1006 and 1015 are never sent).
VALID_CLOSE_CODES = frozenset((*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)))

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
# The most one read takes: many send frames, or a good part of a large one.
READ_CHUNK = 64 * 1024


class HeldSocket(HeldStream):
    """One WebSocket, from its handshake to its close."""

    __slots__ = (
        "_closing",
        "_fragments",
        "_heard",
        "_held",
        "_inbox",
        "_key",
        "_message_size",
        "_message_text",
        "_outgoing",
        "_sender",
        "_sockets",
        "_stream",
        "_user",
    )
    transport = "websocket"

    def __init__(
        self, services: Services, conn: HTTP1Connection, sockets: set[HeldSocket] | None = None
    ) -> None:
        super().__init__(services, conn)
        # The gateway's upgraded sockets (Gateway.stop closes those still open): once
        # detached, Tornado's server no longer knows the connection.
        self._sockets = sockets
        self._key = ""  # Sec-WebSocket-Key until the upgrade
        self._user: User | None = None
        self._stream: IOStream | None = None  # once upgraded
        self._heard = True  # a frame (a pong...) came since the last ping
        self._closing = False  # our close frame is out
        self._inbox = b""  # what was read of the frames not yet whole
        self._fragments: list[bytes] | None = None  # the message being read
        self._message_size = 0  # ... its size so far (each fragment counts a byte at least)
        self._message_text = False  # ... and whether it is text
        self._held = False  # admitted: from here on, failures close the socket
        self._outgoing: list[dict[str, Any]] | None = None
        self._sender: asyncio.Future[None] | None = None

    # -- the handshake, checked before anything is held ---------------------------------

    def authenticated(self, request: httputil.HTTPServerRequest, user: User) -> None:
        headers = request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(
                400, "websocket_required", "This endpoint speaks WebSocket: send an Upgrade."
            )
        if "upgrade" not in (t.strip().lower() for t in headers.get("Connection", "").split(",")):
            raise ApiError(400, "websocket_required", 'The "Connection" header must be "Upgrade".')
        origin = headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request.host):
            raise ApiError(403, "cross_origin", "Cross-origin WebSockets are not allowed.")
        if headers.get("Sec-WebSocket-Version") != "13":
            raise ApiError(
                426,
                "upgrade_required",
                "Only WebSocket version 13 is spoken here.",
                {"Sec-WebSocket-Version": "13"},
            )
        key = headers.get("Sec-WebSocket-Key", "")
        if not key:
            raise ApiError(400, "websocket_required", "The Sec-WebSocket-Key header is missing.")
        self._key = key
        self._user = user

    def _origin_allowed(self, origin: str, host: str) -> bool:
        if origin.rstrip("/") in self.services.settings.allowed_origins:
            return True
        # Same origin as the page's host; a cross-site page must be listed explicitly.
        return urlsplit(origin).netloc.lower() == host.lower()

    def opened(self, feed: Feed) -> None:
        self._held = True
        super().opened(feed)

    def _upgrade(self) -> None:
        """101, then the socket is ours: frames are read by callbacks from here on."""
        accept = WebSocketProtocol13.compute_accept_value(self._key)
        self._key = ""
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
        ]
        if self._request_id:
            lines.append(f"{REQUEST_ID_HEADER}: {self._request_id}")
        self._stream = stream = self._conn.detach()
        if self._sockets is not None and not stream.closed():
            # Until its close callback, _gone (which a stream closed already never runs).
            self._sockets.add(self)
        stream.max_write_buffer_size = MAX_WRITE_BUFFER
        # Small frames, often two in a row (an event, then a send's answer): with Nagle's
        # algorithm on, the second waits for the client's delayed ACK (~40 ms).
        stream.set_nodelay(True)
        stream.set_close_callback(self._gone)
        stream.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._log(101)
        self._read()

    # -- events out ----------------------------------------------------------------------

    async def _write_events(self, events: list[Event], beat: bool) -> bool:
        frames: list[bytes] = []
        if self._stream is None:
            self._upgrade()
            frames.append(control_json("ready", cursor=self._start_cursor))
        frames += [e.data for e in events]
        if beat:
            if not self._heard:  # not even the pong of the last beat's ping: gone
                self._leave()
                self._drop()
                return False
            self._heard = False
            # Our pings keep the TCP path alive but pages cannot see them; this frame
            # lets the client know the stream is alive.
            frames.append(control_json("heartbeat"))
            self._frame(PING, b"")
        written = None
        for data in frames:
            written = self._frame(TEXT, data)
        await self._flushed(written)
        return True

    def _frame(self, opcode: int, payload: bytes) -> asyncio.Future[None] | None:
        """Write one unfragmented, unmasked frame (a server's); None once it is closed,
        and once our close frame is out (nothing may follow it, RFC 6455 5.5.1)."""
        stream = self._stream
        if stream is None or stream.closed() or (self._closing and opcode != CLOSE):
            return None
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
        try:
            written = stream.write(head + payload)
        except StreamBufferFullError:
            log.info("websocket: the client reads nothing of what it asks for; dropping it")
            self.services.metrics.closed.labels("slow_consumer").inc()
            self._drop()
            return None
        written.add_done_callback(_retrieve)
        return written

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.close()  # its close callback is _gone
        else:
            super()._drop()

    def _gone(self) -> None:
        if self._sockets is not None:
            self._sockets.discard(self)
        super()._gone()

    def cut(self) -> None:
        """Close the connection now, whatever it is doing (waiting for the client's
        answer to our close frame...): the gateway is stopping."""
        self._drop()

    # -- how it ends ---------------------------------------------------------------------

    def _can_end(self, reason: str) -> bool:
        return self._upgraded_for_close()

    def _end(self, reason: str, cursor: int) -> None:
        services = self.services
        services.metrics.closed.labels(reason).inc()
        retry_ms = retry_after(reason, services.settings.drain_spread)
        self._frame(TEXT, control_json("close", reason=reason, cursor=cursor, retry_ms=retry_ms))
        self._close(CLOSE_CODES.get(reason, CLOSE_NORMAL), reason)

    def _error(self, exc: Exception) -> None:
        if not self._held:
            super()._error(exc)  # before anything was held: a plain HTTP answer
            return
        if isinstance(exc, StreamClosedError):
            self._drop()
            return
        if isinstance(exc, ApiError):
            # The client's mistake (cursor_ahead) or ours (chatcore unavailable): only the
            # latter is worth retrying as is.
            code = CLOSE_BAD_REQUEST if exc.status < 500 else CLOSE_TRY_AGAIN
            reason = exc.code
        else:
            # A bug must not leave an open socket that delivers nothing: close it, and
            # the client resumes by cursor.
            log.error("websocket failed", exc_info=(type(exc), exc, exc.__traceback__))
            code, reason = CLOSE_TRY_AGAIN, "internal_error"
        if self._upgraded_for_close():
            self._close(code, reason)

    def _upgraded_for_close(self) -> bool:
        """Upgraded (now, if need be) so that a close can say why; False if the client
        has gone already."""
        if self._stream is None:
            stream = self._conn.stream
            if stream is None or stream.closed():
                return False
            self._upgrade()
        return True

    def _close(self, code: int, reason: str) -> None:
        """Our close frame; the client's answer (or CLOSE_WAIT) ends the connection."""
        if self._closing or self._stream is None:
            return
        self._closing = True
        self._frame(CLOSE, struct.pack("!H", code) + reason.encode()[:120])
        asyncio.get_running_loop().call_later(CLOSE_WAIT, self._drop)

    # -- frames in -----------------------------------------------------------------------

    def _read(self) -> None:
        """Read what has come, whatever it holds (part of a frame, several frames).

        One read and one callback per batch of bytes, not one per frame part. (Its
        first reason, Tornado's listening stopped and restarted between a header's
        read and its payload's, is gone for every read since longtail.ioloop.)
        """
        stream = self._stream
        if stream is None or stream.closed():
            return
        try:
            reading = asyncio.ensure_future(stream.read_bytes(READ_CHUNK, partial=True))
        except StreamClosedError:
            return
        reading.add_done_callback(self._on_data)

    def _on_data(self, reading: asyncio.Future[bytes]) -> None:
        data = _received(reading)
        if data is None:
            return
        inbox = self._inbox + data if self._inbox else data
        pos, end = 0, len(inbox)
        while end - pos >= 2:
            first, second = inbox[pos], inbox[pos + 1]
            opcode, length = first & 0x0F, second & 0x7F
            if first & 0x70 or not second & 0x80:  # extension bits, or an unmasked frame
                self._fail(CLOSE_PROTOCOL_ERROR, "protocol_error")
                return
            if opcode >= CLOSE and (not first & 0x80 or length > 125):
                self._fail(CLOSE_PROTOCOL_ERROR, "protocol_error")  # control frames are small
                return
            head = pos + 2
            if length >= 126:
                extra = 2 if length == 126 else 8
                if end - head < extra:
                    break
                length = int.from_bytes(inbox[head : head + extra], "big")
                head += extra
            size = 0
            if opcode < CLOSE:  # data: the message's size so far counts (control frames: no)
                before = self._message_size if opcode == CONTINUATION else 0
                # At least a byte per fragment: endless empty fragments end too. Checked
                # on the header, before the payload is waited for.
                size = before + max(length, 1)
                if size > self.services.settings.max_request_bytes:
                    self._fail(CLOSE_TOO_BIG, "message_too_big")
                    return
            if end - head < 4 + length:  # the mask, then the payload
                break
            pos = head + 4 + length
            if opcode < CLOSE:
                self._message_size = size
            if not self._on_frame(
                first, _websocket_mask(inbox[head : head + 4], inbox[head + 4 : pos])
            ):
                return
        self._inbox = inbox[pos:]
        self._read()

    def _on_frame(self, first: int, payload: bytes) -> bool:
        """One whole frame, unmasked; False once nothing more is to be read."""
        self._heard = True
        opcode, final = first & 0x0F, bool(first & 0x80)
        if opcode == CLOSE:
            self._on_close_frame(payload)
            return False
        if opcode == PING:
            self._frame(PONG, payload)
        elif self._closing:
            pass  # data after our close frame is dropped (RFC 6455 1.4)
        elif opcode in (TEXT, BINARY, CONTINUATION):
            if (opcode == CONTINUATION) != (self._fragments is not None):
                self._fail(CLOSE_PROTOCOL_ERROR, "protocol_error")  # a stray or cut message
                return False
            if opcode != CONTINUATION:
                self._fragments = []
                self._message_text = opcode == TEXT
            assert self._fragments is not None
            self._fragments.append(payload)
            if final:
                message, self._fragments = b"".join(self._fragments), None
                return self._on_message(message, self._message_text)
        elif opcode != PONG:
            self._fail(CLOSE_PROTOCOL_ERROR, "protocol_error")
            return False
        return True

    def _on_close_frame(self, payload: bytes) -> None:
        if self._closing:
            self._drop()  # the answer to ours: done
            return
        if not payload:
            self._close_now(CLOSE_NORMAL, "")
            return
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
        if code not in VALID_CLOSE_CODES:
            self._fail(CLOSE_PROTOCOL_ERROR, "protocol_error")
            return
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            self._fail(CLOSE_INVALID_DATA, "invalid_utf8")
            return
        self._close_now(code, "")  # echoed, as Tornado did

    def _fail(self, code: int, reason: str) -> None:
        """A protocol violation: our close frame, then the connection goes (RFC 6455
        7.1.7: nothing more is read from a client that broke the framing)."""
        log.info("websocket closed: %s", reason)
        self._close_now(code, reason, linger=True)

    def _close_now(self, code: int, reason: str, *, linger: bool = False) -> None:
        """Our close frame (or the echo of the client's), then drop the connection.

        With `linger`, what the client sent is left unread (a frame too big, a broken
        one): closing at once would answer it with a reset that can overtake our close
        frame, so our side is shut first and the client has FAIL_LINGER to go.
        """
        written = None
        if not self._closing:
            self._closing = True
            written = self._frame(CLOSE, struct.pack("!H", code) + reason.encode()[:120])
        if written is None:
            self._drop()
            return
        if linger:
            written.add_done_callback(lambda _: self._shut_then_drop())
        else:
            written.add_done_callback(lambda _: self._drop())
        # A client that reads nothing never lets the write finish: gone all the same.
        asyncio.get_running_loop().call_later(CLOSE_WAIT, self._drop)

    def _shut_then_drop(self) -> None:
        stream = self._stream
        if stream is None or stream.closed():
            return
        with suppress(OSError):
            stream.socket.shutdown(socket.SHUT_WR)
        asyncio.get_running_loop().call_later(FAIL_LINGER, self._drop)

    # -- sends in --------------------------------------------------------------------------

    def _on_message(self, message: bytes, text: bool) -> bool:
        """A `send` frame joins the socket's queue; its answer comes in order. False if
        the socket is being closed over it."""
        if text:
            try:
                message.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "invalid_utf8")
                return False
        try:
            frame = send_frame(message)
        except ApiError as exc:
            self._frame(TEXT, control_json("error", **exc.body()))
            return True
        outgoing = self._outgoing
        if outgoing is None:
            outgoing = self._outgoing = []
        if len(outgoing) >= MAX_QUEUED_SENDS:
            refusal = ApiError(
                429, "too_many_sends", f"At most {MAX_QUEUED_SENDS} sends may await answers."
            )
            self._frame(TEXT, answer_json(frame.get("client_id"), refusal))
            return True
        outgoing.append(frame)
        if self._sender is None:
            self._sender = self.services.inflight.start(self._send_queued())
        return True

    async def _send_queued(self) -> None:
        """Send what is queued, all at once (one rate-limit check, one batch), answer in
        order, and go again for what arrived meanwhile."""
        user = self._user
        assert user is not None
        feed = self._feed
        try:
            # Not after our close frame (the answers could not be written), nor as a
            # session that logged out meanwhile.
            while self._outgoing and not self._closing:
                if feed is not None and feed.mailbox.closed is not None:
                    break
                frames, self._outgoing = self._outgoing, None
                outcomes = await send_messages(self.services, user, frames)
                # Not awaited: a client gone meanwhile just misses the answers (its sends
                # are idempotent on client_id; it resends after reconnecting).
                for frame, outcome in zip(frames, outcomes, strict=True):
                    self._frame(TEXT, answer_json(frame.get("client_id"), outcome))
        except Exception:
            log.exception("websocket sends failed")
            self._close(CLOSE_TRY_AGAIN, "internal_error")
        finally:
            self._sender = None


class SocketMethods(GatewayHandler):
    """/api/events/ws for anything but GET (which HeldSocket takes): a JSON 405."""


def send_frame(message: str | bytes) -> dict[str, Any]:
    """A client frame as the message it sends (its `type` dropped), or a 400."""
    frame = json_object(message)
    if frame.get("type") != "send":
        raise ApiError(400, "unknown_frame", 'The client sends only {"type": "send", ...}.')
    del frame["type"]
    return frame


def answer_json(client_id: Any, outcome: Outcome) -> bytes:
    """The answer to a `send` frame, with what `POST /api/messages` would have said."""
    if isinstance(outcome, ApiError):
        return control_json(
            "send_failed", client_id=client_id, status=outcome.status, **outcome.body()
        )
    status, message = outcome
    return control_json("sent", client_id=client_id, status=status, message=message)


def _received(reading: asyncio.Future[bytes]) -> bytes | None:
    """A read's bytes; None when the connection closed first (its callback says gone)."""
    if reading.cancelled():
        return None
    with suppress(StreamClosedError):
        return reading.result()
    return None


def _retrieve(written: asyncio.Future[None]) -> None:
    """A write nobody awaits: its failure (the client went) is expected, not an error."""
    if not written.cancelled():
        written.exception()
