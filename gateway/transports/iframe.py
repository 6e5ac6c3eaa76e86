"""Forever iframe: GET /api/events/iframe?cursor=&callback=, an HTML page that never ends.

Each event (and each `ready`/`heartbeat`/`close` control message) is one
`<script>p(...)</script>` that calls the parent page's `callback` (default
`longtail_iframe`). The event JSON is made script-safe (gateway.cursors.script_safe):
no message body can close the script element. The page may only be framed by its own
origin and may load nothing (CSP), so even a bug in the escaping has nowhere to go.
"""

from __future__ import annotations

from typing import Any

from gateway.cursors import script_safe, valid_callback
from gateway.transports.stream import StreamTransport, control_json
from longtail.wire import Event

# Browsers start running a streamed document's scripts only after its first kilobyte
# or so: an HTML comment of padding gets us past that.
PADDING = b"<!--" + b" " * 1024 + b"-->\n"


class ForeverIframe(StreamTransport):
    transport = "iframe"
    content_type = "text/html; charset=utf-8"
    query_token = True

    def prepare(self) -> None:
        super().prepare()
        self.callback = valid_callback(self.get_query_argument("callback", "longtail_iframe"))
        self.set_header("X-Frame-Options", "SAMEORIGIN")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; frame-ancestors 'self'",
        )

    def prelude(self, cursor: int) -> bytes:
        head = (
            b'<!DOCTYPE html><html><head><meta charset="utf-8"><title>longtail</title>'
            b"<script>function p(m){try{parent.%s(m)}catch(e){}}</script></head><body>\n"
        ) % self.callback.encode()
        return head + PADDING + self.control("ready", cursor=cursor)

    def frame(self, event: Event) -> bytes:
        return b"<script>p(%s)</script>\n" % script_safe(event.data)

    def control(self, kind: str, **fields: Any) -> bytes:
        return b"<script>p(%s)</script>\n" % script_safe(control_json(kind, **fields))

    def epilogue(self) -> bytes:
        return b"</body></html>\n"
