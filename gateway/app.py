"""Assembling a gateway: make_app(services) for the routes, Gateway for the process."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from pathlib import Path
from typing import Any

import tornado.web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tornado.httpserver import HTTPServer
from tornado.log import access_log
from tornado.netutil import bind_sockets

from gateway import api
from gateway.auth import Authenticator
from gateway.base import DRAIN_LIMIT, Services, redact_uri
from gateway.catchup import Catchup
from gateway.chatcore_client import ChatcoreClient
from gateway.health import Healthz, Metrics, Readyz
from gateway.hub import Hub
from gateway.limits import ConnectionLimits, RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.presence import Presence
from gateway.transports.iframe import ForeverIframe
from gateway.transports.jsonp import JsonpPoll
from gateway.transports.longpoll import LongPoll
from gateway.transports.multipart import MultipartStream
from gateway.transports.sse import EventStream
from gateway.transports.websocket import EventSocket
from gateway.transports.xhr import XhrStream
from longtail.settings import Settings
from longtail.web import NotFoundHandler
from longtail.wire import Keys

log = logging.getLogger("longtail.gateway")

ID = r"(\d{1,18})"
STATIC = str(Path(__file__).with_name("static"))


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, minus session tokens passed in URLs (script/iframe)."""
    status = handler.get_status()
    log_method = access_log.info if status < 400 else access_log.warning
    if status >= 500:
        log_method = access_log.error
    request = handler.request
    log_method(
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        redact_uri(request.uri or ""),
        request.remote_ip,
        1000.0 * request.request_time(),
    )


PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)


class StaticFiles(tornado.web.StaticFileHandler):
    """The browser client and pages; revalidated on each load (they change with deploys)."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        # The pages load only their own files and cannot be framed by other sites; the
        # iframe transport frames our own origin, JSONP loads our own scripts.
        self.set_header("Content-Security-Policy", PAGE_POLICY)
        self.set_header("X-Frame-Options", "SAMEORIGIN")


def command_pool(url: str) -> BlockingConnectionPool:
    """Redis connections for sessions, catch-up, presence and limits.

    A burst of requests waits briefly for a free connection instead of failing at once
    (redis-py's default pool raises past 100), which would send every lookup of the
    burst to chatcore instead.
    """
    return BlockingConnectionPool.from_url(url, max_connections=256, timeout=5)


def subscriber_options() -> dict[str, Any]:
    """The subscriber must surface every connection error to the hub, which then
    re-subscribes and catches up; redis-py's silent retry would hide the gap."""
    return {"retry": Retry(NoBackoff(), 0), "socket_keepalive": True}


def make_app(services: Services) -> tornado.web.Application:
    routes: list[tuple[str, type[tornado.web.RequestHandler]]] = [
        (r"/api/register", api.Register),
        (r"/api/login", api.Login),
        (r"/api/logout", api.Logout),
        (r"/api/me", api.Me),
        (r"/api/friends", api.Friends),
        (rf"/api/friends/{ID}", api.Friend),
        (r"/api/messages", api.Messages),
        (r"/api/conversations", api.Conversations),
        (rf"/api/conversations/{ID}/messages", api.History),
        (rf"/api/conversations/{ID}/read", api.Read),
        (r"/api/rooms", api.Rooms),
        (rf"/api/rooms/{ID}", api.Room),
        (rf"/api/rooms/{ID}/members", api.RoomMembers),
        (rf"/api/rooms/{ID}/leave", api.RoomLeave),
        (r"/api/typing", api.Typing),
        (r"/api/events", LongPoll),
        (r"/api/events/stream", EventStream),
        (r"/api/events/ws", EventSocket),
        (r"/api/events/jsonp", JsonpPoll),
        (r"/api/events/iframe", ForeverIframe),
        (r"/api/events/multipart", MultipartStream),
        (r"/api/events/xhr", XhrStream),
        (r"/healthz", Healthz),
        (r"/readyz", Readyz),
        (r"/metrics", Metrics),
    ]
    heartbeat = services.settings.heartbeat
    static: list[Any] = [
        (
            r"/(longtail\.js|tabs\.js|app\.js|app\.css|console\.html|console\.js)",
            StaticFiles,
            {"path": STATIC},
        ),
        (r"/()", StaticFiles, {"path": STATIC, "default_filename": "index.html"}),
    ]
    return tornado.web.Application(
        [(path, handler, {"services": services}) for path, handler in routes] + static,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        websocket_ping_interval=heartbeat,
        websocket_ping_timeout=heartbeat,  # Tornado requires timeout <= interval
        websocket_max_message_size=services.settings.max_request_bytes,
    )


class Gateway:
    """One gateway process: start() connects and serves, stop() drains and closes."""

    def __init__(
        self, settings: Settings, *, redis: Redis | None = None, subscriber: Redis | None = None
    ) -> None:
        keys = Keys(settings.redis_prefix)
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.redis = redis or Redis(connection_pool=command_pool(settings.redis_url))
        self.subscriber = subscriber or Redis.from_url(settings.redis_url, **subscriber_options())
        self.chatcore = ChatcoreClient(settings.chatcore_url, settings.secret, self.metrics)
        self.hub = Hub(self.subscriber, keys, unsubscribe_grace=settings.unsubscribe_grace)
        self.catchup = Catchup(self.redis, keys, self.chatcore)
        self.presence = Presence(self.redis, keys, self.hub, self.chatcore)
        self.metrics.watch(self.hub, self.catchup)
        self.services = Services(
            settings,
            self.hub,
            self.catchup,
            self.chatcore,
            Authenticator(self.redis, keys, self.chatcore),
            self.presence,
            self.metrics,
            RateLimiter(self.redis, keys),
            ConnectionLimits(
                settings.max_connections_per_user,
                settings.max_connections_per_ip,
                settings.max_connections,
            ),
        )
        self.server: HTTPServer | None = None
        self.port: int | None = None

    async def start(self, port: int | None = None) -> None:
        await self.chatcore.start()
        await self.hub.start()
        await self.presence.start()
        sockets = bind_sockets(
            self.settings.port if port is None else port, address=self.settings.host
        )
        # xheaders: behind nginx/haproxy the client's address and scheme come from
        # X-Forwarded-For / X-Forwarded-Proto (deploy/ sets them).
        self.server = HTTPServer(
            make_app(self.services),
            xheaders=True,
            idle_connection_timeout=3600,
            max_body_size=DRAIN_LIMIT,
        )
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        log.info(
            "gateway %s listening on http://%s:%d",
            self.hub.gateway_id,
            self.settings.host,
            self.port,
        )

    async def stop(self) -> None:
        """Drain, then close: what SIGTERM does.

        Readiness turns false at once and no connection is accepted; every held request
        is told to end now (long-polls answer with their cursor, streams close with a
        jittered retry hint, WebSockets with 1012), so clients resume on other gateways.
        Whatever is still open after LONGTAIL_DRAIN_SECONDS is cut.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_seconds
        self.services.draining = True
        if self.server is not None:
            self.server.stop()
        held = self.hub.connection_count()
        self.hub.close_all("draining")
        while self.hub.connection_count() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        left = self.hub.connection_count()
        log.info("drained %d held connection(s), %d cut", held - left, left)
        if self.server is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(
                    self.server.close_all_connections(), max(0.1, deadline - loop.time())
                )
        await self.presence.stop()
        await self.hub.stop()
        await self.chatcore.close()
        await self.redis.aclose()
        await self.subscriber.aclose()
