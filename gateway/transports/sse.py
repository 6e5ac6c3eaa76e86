"""Server-Sent Events: GET /api/events/stream, resumed by Last-Event-ID or ?cursor=.

Events are `id: <seq>` + `data: <event JSON>` (the default `message` type); control
messages are named events (`ready`, `heartbeat`, `close`) so that a page can see the
heartbeat (EventSource hides comments) and `onmessage` sees events only.

Held GET streams take the lean path (gateway.transports.lean_stream); this handler
serves the rest (HEAD, other methods' 405s), and both frame with the functions below.
"""

from __future__ import annotations

from typing import Any

from gateway.transports.stream import StreamTransport, control_json
from gateway.transports.timing import RETRY_SOON_MS
from longtail.wire import Event

CONTENT_TYPE = "text/event-stream; charset=utf-8"


def sse_frame(event: Event) -> bytes:
    if not event.seq:  # ephemeral: no id, so Last-Event-ID keeps the durable cursor
        return b"data: %s\n\n" % event.data
    return b"id: %d\ndata: %s\n\n" % (event.seq, event.data)


def sse_control(kind: str, **fields: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), control_json(kind, **fields))


def sse_prelude(cursor: int) -> bytes:
    return b"retry: %d\n" % RETRY_SOON_MS + sse_control("ready", cursor=cursor)


def sse_closing(reason: str, cursor: int, retry_ms: int) -> bytes:
    # `retry:` is EventSource's own reconnect delay, for clients not using longtail.js.
    return b"retry: %d\n" % retry_ms + sse_control(
        "close", reason=reason, cursor=cursor, retry_ms=retry_ms
    )


class EventStream(StreamTransport):
    transport = "sse"
    content_type = CONTENT_TYPE

    def cursor_argument(self) -> str | None:
        return self.request.headers.get("Last-Event-ID") or self.get_query_argument("cursor", None)

    def prelude(self, cursor: int) -> bytes:
        return sse_prelude(cursor)

    def closing(self, reason: str, cursor: int, retry_ms: int) -> bytes:
        return sse_closing(reason, cursor, retry_ms)

    def frame(self, event: Event) -> bytes:
        return sse_frame(event)

    def control(self, kind: str, **fields: Any) -> bytes:
        return sse_control(kind, **fields)
