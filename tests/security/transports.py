"""Opening every event transport with chosen credentials, as a hostile client would."""

from __future__ import annotations

import aiohttp

# Every way to read events; `query` says whether the transport accepts ?token=.
TRANSPORTS = {
    "longpoll": ("/api/events?cursor=0&timeout=1", False),
    "interval": ("/api/events?cursor=0&timeout=0", False),
    "head": ("/api/events", False),
    "sse": ("/api/events/stream?cursor=0", False),
    "sse-last-event-id": ("/api/events/stream", False),
    "ws": ("/api/events/ws?cursor=0", False),
    "jsonp": ("/api/events/jsonp?callback=cb&cursor=0&timeout=1", True),
    "iframe": ("/api/events/iframe?cursor=0", True),
    "multipart": ("/api/events/multipart?cursor=0", False),
    "xhr": ("/api/events/xhr?cursor=0", False),
    "piggyback": ("/api/me", False),
}

EXTRA_HEADERS = {
    "sse-last-event-id": {"Last-Event-ID": "0"},
    "piggyback": {"X-Longtail-Cursor": "0"},
}


def credentials(how: str, token: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query parameters that present `token` the way `how` says."""
    if how == "bearer":
        return {"Authorization": f"Bearer {token}"}, {}
    if how == "cookie":
        return {"Cookie": f"longtail_session={token}"}, {}
    if how == "query":
        return {}, {"token": token}
    raise ValueError(how)


async def open_status(
    http: aiohttp.ClientSession, base: str, transport: str, how: str, token: str
) -> int:
    """The status a transport answers with (101 for an accepted WebSocket upgrade).

    Nothing is read beyond the status: an accepted stream is simply dropped.
    """
    path, _ = TRANSPORTS[transport]
    headers, params = credentials(how, token)
    headers = {**headers, **EXTRA_HEADERS.get(transport, {})}
    timeout = aiohttp.ClientTimeout(total=10)
    if transport == "ws":
        url = base.replace("http", "ws", 1) + path
        try:
            async with http.ws_connect(url, headers={**headers, "Origin": base}, params=params):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
    async with http.get(base + path, headers=headers, params=params, timeout=timeout) as resp:
        return resp.status
