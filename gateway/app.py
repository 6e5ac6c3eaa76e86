"""Assembling a gateway: make_app(services) for the routes, Gateway for the process."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import tornado.web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from gateway import api
from gateway.auth import Authenticator
from gateway.base import DRAIN_LIMIT, Services
from gateway.catchup import Catchup
from gateway.chatcore_client import ChatcoreClient
from gateway.forwarded import ForwardedFor, TrustedProxies
from gateway.health import Healthz, Metrics, Readyz
from gateway.hub import Hub
from gateway.lean_send import LeanSend
from gateway.limits import ConnectionLimits, RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.presence import Presence
from gateway.session_cache import SessionCache
from gateway.shards import Shards, SingleShard, shards_for
from gateway.transports.iframe import ForeverIframe
from gateway.transports.jsonp import JsonpPoll
from gateway.transports.lean import HeldJsonp, HeldPoll
from gateway.transports.lean_stream import HeldEventStream
from gateway.transports.longpoll import LongPoll
from gateway.transports.multipart import MultipartStream
from gateway.transports.sse import EventStream
from gateway.transports.websocket import HeldSocket, SocketMethods
from gateway.transports.xhr import XhrStream
from longtail.lean import LeanApplication, LeanFactory
from longtail.logs import log_access
from longtail.redisconn import command_client
from longtail.settings import Settings
from longtail.web import NotFoundHandler
from longtail.wire import Keys

log = logging.getLogger("longtail.gateway")

# How often a gateway checks that it can still hear Redis (see Gateway._watch_redis).
REDIS_WATCH_INTERVAL = 0.5

ID = r"(\d{1,18})"
STATIC = str(Path(__file__).with_name("static"))


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, minus session tokens passed in URLs (script/iframe)."""
    request = handler.request
    log_access(
        handler.get_status(),
        request.method or "",
        request.uri or "",
        request.remote_ip,
        request.request_time(),
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


# Redis connections for sessions, catch-up, presence and limits. On one server a burst
# waits briefly for a free one instead of failing at once (redis-py's default pool
# raises past 100), which would send every lookup of the burst to chatcore instead.
COMMAND_POOL = 256


def command_options() -> dict[str, Any]:
    """Commands time out instead of hanging on a black-holed Redis: each has a way on
    (session and catch-up: chatcore; a rate limit: unchecked), and a held poll's answer
    waits for its catch-up."""
    return {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}


def subscriber_options() -> dict[str, Any]:
    """The subscriber must surface every connection error to the hub, which then
    re-subscribes and catches up; redis-py's silent retry would hide the gap."""
    return {"retry": Retry(NoBackoff(), 0), "socket_keepalive": True}


def make_app(services: Services, sockets: set[HeldSocket] | None = None) -> tornado.web.Application:
    """The gateway's routes. Upgraded WebSockets join `sockets`, for Gateway.stop: once
    detached from Tornado's server, nothing else can close them."""
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
        (r"/api/events/ws", SocketMethods),
        (r"/api/events/jsonp", JsonpPoll),
        (r"/api/events/iframe", ForeverIframe),
        (r"/api/events/multipart", MultipartStream),
        (r"/api/events/xhr", XhrStream),
        (r"/healthz", Healthz),
        (r"/readyz", Readyz),
        (r"/metrics", Metrics),
    ]
    static: list[Any] = [
        (
            r"/(longtail\.js|tabs\.js|app\.js|app\.css|console\.html|console\.js)",
            StaticFiles,
            {"path": STATIC},
        ),
        (r"/()", StaticFiles, {"path": STATIC, "default_filename": "index.html"}),
    ]
    # Held GET polls, SSE streams and WebSockets skip the RequestHandler
    # (gateway.transports.lean, lean_stream, websocket): most of their life is idle,
    # and a handler's per-request state doubles what an idle one costs. So does the
    # POST of a message (gateway.lean_send), for the CPU each send costs.
    lean: dict[tuple[str, str], LeanFactory] = {
        ("GET", "/api/events"): HeldPoll,
        ("GET", "/api/events/jsonp"): HeldJsonp,
        ("GET", "/api/events/stream"): HeldEventStream,
        ("GET", "/api/events/ws"): partial(HeldSocket, sockets=sockets),
        ("POST", "/api/messages"): LeanSend,
    }
    return LeanApplication(
        services,
        lean,
        [(path, handler, {"services": services}) for path, handler in routes] + static,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
    )


class Gateway:
    """One gateway process: start() connects and serves, stop() drains and closes."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis | None = None,
        subscriber: Redis | Shards | None = None,
    ) -> None:
        keys = Keys(settings.redis_prefix)
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.redis = redis or command_client(
            settings.redis_url, max_connections=COMMAND_POOL, **command_options()
        )
        if subscriber is None:
            subscriber = shards_for(settings.redis_url, **subscriber_options())
        elif isinstance(subscriber, Redis):
            subscriber = SingleShard(subscriber)
        self.chatcore = ChatcoreClient(settings.chatcore_url, settings.secret, self.metrics)
        self.hub = Hub(
            subscriber,
            keys,
            unsubscribe_grace=settings.unsubscribe_grace,
            ping_interval=settings.redis_ping_interval,
        )
        self.catchup = Catchup(self.redis, keys, self.chatcore)
        self.presence = Presence(self.redis, keys, self.hub, self.chatcore)
        sessions = SessionCache(self.hub)
        self.metrics.watch(self.hub, self.catchup, sessions)
        self.services = Services(
            settings,
            self.hub,
            self.catchup,
            self.chatcore,
            Authenticator(self.redis, keys, self.chatcore, sessions),
            self.presence,
            self.metrics,
            RateLimiter(self.redis, keys),
            ConnectionLimits(
                settings.max_connections_per_user,
                settings.max_connections_per_ip,
                settings.max_connections,
            ),
        )
        # Upgraded WebSockets still open: stop() closes them (see make_app).
        self.sockets: set[HeldSocket] = set()
        self.server: HTTPServer | None = None
        self.port: int | None = None
        self._redis_watch: asyncio.Task[None] | None = None

    async def start(self, port: int | None = None) -> None:
        await self.chatcore.start()
        await self.hub.start()
        await self.presence.start()
        self._redis_watch = asyncio.create_task(self._watch_redis(), name="redis-lost-drain")
        sockets = bind_sockets(
            self.settings.port if port is None else port, address=self.settings.host
        )
        # Behind nginx/HAProxy the client's address and scheme are the forwarded ones
        # (deploy/ sets them), believed from LONGTAIL_TRUSTED_PROXIES only.
        self.server = HTTPServer(
            ForwardedFor(
                make_app(self.services, self.sockets),
                TrustedProxies(self.settings.trusted_proxies),
            ),
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
        Whatever is still open after LONGTAIL_DRAIN_SECONDS is cut. WebSockets are cut
        as soon as none is held: their close frame is out, and one whose client does
        not answer it would otherwise stay open for CLOSE_WAIT, past this stop().
        Requests being worked on (a send on its way to chatcore) are answered before
        connections close, within the same deadline; Redis and the hop to chatcore
        close only after that work has ended or been cancelled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_seconds
        self.services.draining = True
        if self._redis_watch is not None:
            self._redis_watch.cancel()
        if self.server is not None:
            self.server.stop()
        held = self.hub.connection_count()
        self.hub.close_all("draining")
        while self.hub.connection_count() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        left = self.hub.connection_count()
        log.info("drained %d held connection(s), %d cut", held - left, left)
        # Detached from the server when they upgraded: close_all_connections cannot.
        for held_socket in list(self.sockets):
            held_socket.cut()
        services = self.services
        cancelled = await services.inflight.settle(deadline - loop.time())
        if cancelled:
            log.warning("cancelled %d request(s) still working at the drain deadline", cancelled)
        if self.server is not None:
            with suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    await self.server.close_all_connections()
        await self.presence.stop()
        await self.hub.stop()
        await services.auth.aclose()
        await services.rates.aclose()
        await self.chatcore.close()
        await self.redis.aclose()

    async def _watch_redis(self) -> None:
        """A gateway that cannot hear Redis hands its clients to the gateways that can.

        Its held requests end as on SIGTERM (long-polls answer with their cursor,
        streams close with a spread retry hint) and new ones get a 503 with
        Retry-After (nginx tries the next gateway), until it hears Redis again.
        Readiness is false meanwhile. When every gateway has lost Redis, the 503s make
        clients back off instead of polling in a loop.
        """
        limits = self.services.connections
        loop = asyncio.get_running_loop()
        lost_since: float | None = None
        while True:
            await asyncio.sleep(REDIS_WATCH_INTERVAL)
            if self.hub.reachable:
                lost_since = None
                if limits.redis_lost:
                    log.info("redis reachable again: taking clients")
                    limits.redis_lost = False
                continue
            if lost_since is None:
                lost_since = loop.time()
            if limits.redis_lost or loop.time() - lost_since < self.settings.redis_lost_drain_after:
                continue
            log.warning(
                "redis unreachable for %.1fs: handing %d held connection(s) to other gateways",
                loop.time() - lost_since,
                self.hub.connection_count(),
            )
            limits.redis_lost = True
            self.hub.close_all("draining")
