"""JSONP / script-tag long-poll: GET /api/events/jsonp?callback=&cursor=&timeout=.

Answers `/**/NAME({"events": [...], "cursor": N});` as application/javascript with
nosniff, for pages that can only add <script> elements. The same long-poll and cursor
rules as /api/events; errors keep their 4xx status and call NAME({"error": ...}).

Why this cannot leak a user's events to another site (XSSI): a script tag is a
cross-site GET that runs whatever comes back in the including page, so the response
must only ever be made for the page that owns the session. The session cookie is
SameSite=Lax, which browsers do not send on cross-site subresource requests, so a
foreign page's tag arrives unauthenticated and gets a 401. A page that authenticates
with `?token=` holds the token already. The callback name is a strict identifier path
(no statement can be injected) and the body starts with `/**/` (no content sniffing
trick can reinterpret it). JSONP is GET-only: nothing here changes state (no CSRF).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.cursors import script_safe, valid_callback
from gateway.transports.longpoll import LongPoll
from longtail.errors import ApiError
from longtail.wire import Event

JAVASCRIPT = "application/javascript; charset=utf-8"


class JsonpPoll(LongPoll):
    transport = "jsonp"
    query_token = True
    callback = ""

    def prepare(self) -> None:
        super().prepare()
        self.callback = valid_callback(self.get_query_argument("callback", None))

    def body_for(self, events: list[Event], cursor: int) -> bytes:
        self.set_header("Content-Type", JAVASCRIPT)
        return self._call(super().body_for(events, cursor))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not self.callback or not isinstance(exc, ApiError):
            super().write_error(status_code, **kwargs)
            return
        self.set_header("Content-Type", JAVASCRIPT)
        self.finish(self._call(json.dumps(exc.body()).encode()))

    def _call(self, payload: bytes) -> bytes:
        return b"/**/%s(%s);" % (self.callback.encode(), script_safe(payload))
