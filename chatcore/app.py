"""Running chatcore: the database, the Redis publisher, the internal HTTP server."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from chatcore.api import make_app
from chatcore.db import Database
from chatcore.migrate import migrate
from chatcore.sends_socket import SendSockets
from chatcore.service import Chat
from longtail.redisconn import command_client
from longtail.settings import ConfigError, Settings

log = logging.getLogger("longtail.chatcore")


# Publishes and session lookups run concurrently, one connection each at most.
REDIS_CONNECTIONS = 128


def redis_options() -> dict[str, Any]:
    """Fail fast: a send is committed before it is published, and the outbox re-publishes
    whatever Redis did not take, so waiting seconds on a dead Redis only delays the
    sender's answer."""
    return {
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        "socket_connect_timeout": 0.5,
        "socket_timeout": 2.0,
    }


class Chatcore:
    """One chatcore process: start() binds and serves, stop() drains and closes."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        self.db = Database(settings.database_url)
        self.redis = redis or command_client(
            settings.redis_url, max_connections=REDIS_CONNECTIONS, **redis_options()
        )
        self.chat = Chat(settings, self.db, self.redis)
        self.sockets = SendSockets()
        self.server: HTTPServer | None = None
        self.port: int | None = None

    async def start(self, port: int | None = None, *, auto_migrate: bool = False) -> None:
        refuse_public_dev_secret(self.settings)
        if auto_migrate:
            await migrate(self.db)
        await self.chat.publisher.start()
        sockets = bind_sockets(
            self.settings.chatcore_port if port is None else port,
            address=self.settings.chatcore_host,
        )
        self.server = HTTPServer(make_app(self.chat, self.sockets))
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        log.info("chatcore listening on http://%s:%d", self.settings.chatcore_host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
        # Upgraded, so not among the server's connections: their batches answer first.
        await self.sockets.drain(5.0)
        await self.chat.wait_idle(5.0)
        await self.chat.publisher.stop()
        await self.redis.aclose()
        await self.db.close()


def refuse_public_dev_secret(settings: Settings) -> None:
    """The built-in secret is public: fine on loopback, never on a reachable address."""
    if not settings.uses_dev_secret:
        return
    host = settings.chatcore_host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"LONGTAIL_SECRET is the development default but CHATCORE_HOST={host} is not a "
            "loopback address: set LONGTAIL_SECRET to a long random value."
        )
