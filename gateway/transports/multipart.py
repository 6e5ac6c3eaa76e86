"""multipart/x-mixed-replace streaming: GET /api/events/multipart?cursor=.

Each event, and each control message, is one body part of type application/json,
delimited by a boundary per RFC 2046 (`--boundary` lines; `--boundary--` ends it).
"""

from __future__ import annotations

import secrets
from typing import Any

from gateway.transports.stream import StreamTransport, control_json
from longtail.wire import Event


class MultipartStream(StreamTransport):
    transport = "multipart"

    def prepare(self) -> None:
        super().prepare()
        # A random boundary cannot occur inside the JSON parts (RFC 2046 5.1.1).
        self.boundary = f"longtail-{secrets.token_hex(12)}".encode()
        self.content_type = f'multipart/x-mixed-replace; boundary="{self.boundary.decode()}"'

    def _part(self, body: bytes) -> bytes:
        return b"--%s\r\nContent-Type: application/json\r\n\r\n%s\r\n" % (self.boundary, body)

    def frame(self, event: Event) -> bytes:
        return self._part(event.data)

    def control(self, kind: str, **fields: Any) -> bytes:
        return self._part(control_json(kind, **fields))

    def epilogue(self) -> bytes:
        return b"--%s--\r\n" % self.boundary
