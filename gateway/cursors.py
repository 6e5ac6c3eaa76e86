"""Cursors on the wire: parsing what clients send, framing what they get back."""

from __future__ import annotations

import re

from longtail.errors import bad_request
from longtail.wire import Event


def parse_cursor(raw: str | None) -> int | None:
    """A cursor is the last seq the client has (0 for none yet); absent means 'now'."""
    if raw is None or raw == "":
        return None
    # isascii: str.isdigit also accepts digits such as "²" that int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise bad_request(
            f"The cursor must be a non-negative integer, not {raw[:40]!r}.", "invalid_cursor"
        )
    return int(raw)


def events_json(events: list[Event], cursor: int) -> bytes:
    """`{"events": [...], "cursor": N}` with the stored event JSON spliced in as is."""
    return b'{"events":[%s],"cursor":%d}' % (b",".join(e.data for e in events), cursor)


# A JavaScript identifier path such as `cb` or `app.onEvents`: nothing that could close
# the call, start another statement or reach a string.
CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,3}")


def valid_callback(raw: str | None) -> str:
    if raw is None or not CALLBACK.fullmatch(raw):
        raise bad_request(
            "'callback' must be a JavaScript name such as onEvents or app.onEvents.",
            "invalid_callback",
        )
    return raw


def script_safe(data: bytes) -> bytes:
    """JSON made safe to place inside a <script> element or a JavaScript file.

    `<`, `>` and `&` can only occur inside JSON strings, where their \\u escapes mean
    the same: no body can close the script element or open a comment. U+2028/2029
    are line terminators in pre-2019 JavaScript.
    """
    return (
        data.replace(b"<", b"\\u003c")
        .replace(b">", b"\\u003e")
        .replace(b"&", b"\\u0026")
        .replace("\u2028".encode(), b"\\u2028")
        .replace("\u2029".encode(), b"\\u2029")
    )
