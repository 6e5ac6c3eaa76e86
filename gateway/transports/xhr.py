"""XHR streaming: GET /api/events/xhr?cursor=, newline-delimited JSON.

One JSON object per line: events (with `seq`) and control messages (`ready`,
`heartbeat`, `close`, without). Read incrementally (XHR readyState 3, or fetch's stream).
"""

from __future__ import annotations

from typing import Any

from gateway.transports.stream import StreamTransport, control_json
from longtail.wire import Event

# Some browsers and proxies hold back the first couple of KiB of a response before a
# script may read it; a line of spaces (skipped by the reader) pushes past that.
PADDING = b" " * 2048 + b"\n"


class XhrStream(StreamTransport):
    transport = "xhr"
    content_type = "application/x-ndjson; charset=utf-8"

    def prelude(self, cursor: int) -> bytes:
        return PADDING + self.control("ready", cursor=cursor)

    def frame(self, event: Event) -> bytes:
        return event.data + b"\n"

    def control(self, kind: str, **fields: Any) -> bytes:
        return control_json(kind, **fields) + b"\n"
