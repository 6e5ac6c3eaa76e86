"""The client's address and scheme, as the load balancer in front forwards them.

Why not Tornado's `xheaders=True`: it believes `X-Real-IP` / `X-Forwarded-For` /
`X-Forwarded-Proto` from whoever connects, so a client that reaches a gateway directly
picks its own address for the per-address limits and the logs (SECURITY.md). It also
validated every request's address with `getaddrinfo`, 3% of the sending gateway's CPU
under closed-loop POSTs (issue 5's profile). Here the headers count only on connections
from LONGTAIL_TRUSTED_PROXIES, and an address is parsed once per distinct value.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Iterable
from typing import Any

from tornado import httputil

# Trust decisions remembered per peer address: load balancers are few; past this many
# distinct peers (a scan), the rest are decided on every request instead of stored.
KNOWN_PEERS = 4096


class TrustedProxies:
    """The peers whose forwarding headers are believed: networks, or "*" for any."""

    def __init__(self, networks: Iterable[str]) -> None:
        listed = tuple(networks)
        self._any = "*" in listed
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in listed if n != "*")
        self._known: dict[str, bool] = {}

    def __contains__(self, peer: str) -> bool:
        trusted = self._known.get(peer)
        if trusted is None:
            trusted = self._any or self._listed(peer)
            if len(self._known) < KNOWN_PEERS:
                self._known[peer] = trusted
        return trusted

    def _listed(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False  # not an IP peer (a Unix socket)
        mapped = getattr(address, "ipv4_mapped", None)
        return any(address in n or (mapped is not None and mapped in n) for n in self._networks)


def client_address(headers: httputil.HTTPHeaders, peer: str) -> str:
    """X-Real-IP, else the last X-Forwarded-For hop (the address our proxy saw), if it
    is an IP address; else the peer itself. Load balancers in deploy/ set X-Real-IP.
    (`in` first: a missing header costs HTTPHeaders.get a KeyError.)"""
    if "X-Real-Ip" in headers:
        forwarded = headers["X-Real-Ip"]
    elif "X-Forwarded-For" in headers:
        forwarded = headers["X-Forwarded-For"].rpartition(",")[2]
    else:
        return peer
    return _ip(forwarded.strip()) or peer


def client_scheme(headers: httputil.HTTPHeaders, own: str) -> str:
    """X-Forwarded-Proto (its last entry) if http or https, else `own`."""
    if "X-Forwarded-Proto" not in headers:
        return own
    scheme = headers["X-Forwarded-Proto"].rpartition(",")[2].strip().lower()
    return scheme if scheme in ("http", "https") else own


@functools.lru_cache(maxsize=KNOWN_PEERS)
def _ip(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return text


class ForwardedFor(httputil.HTTPServerConnectionDelegate):
    """Wraps the application: on a trusted proxy's connections, each request's
    `remote_ip` and `protocol` are the forwarded ones; on others, the peer's own."""

    def __init__(
        self, application: httputil.HTTPServerConnectionDelegate, trusted: TrustedProxies
    ) -> None:
        self.application = application
        self.trusted = trusted

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        delegate = self.application.start_request(server_conn, request_conn)
        context: Any = getattr(request_conn, "context", None)
        address = getattr(context, "address", None)
        if isinstance(address, tuple) and address[0] in self.trusted:
            return _Forwarded(delegate, context, address[0])
        return delegate

    def on_close(self, server_conn: object) -> None:
        self.application.on_close(server_conn)


class _Forwarded(httputil.HTTPMessageDelegate):
    """One request from a trusted proxy. The connection's context is what
    HTTPServerRequest reads its address and scheme from (as Tornado's xheaders does);
    the proxy's own values come back when the request ends, for the next one."""

    __slots__ = ("_context", "_delegate", "_peer", "_scheme")

    def __init__(self, delegate: httputil.HTTPMessageDelegate, context: Any, peer: str) -> None:
        self._delegate = delegate
        self._context = context
        self._peer = peer
        self._scheme: str = context.protocol

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self._context.remote_ip = client_address(headers, self._peer)
        self._context.protocol = client_scheme(headers, self._scheme)
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()
        self._restore()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()
        self._restore()

    def _restore(self) -> None:
        self._context.remote_ip = self._peer
        self._context.protocol = self._scheme
