"""Which Redis a process talks to, chosen by REDIS_URL alone.

- `redis://host:port/db` (or `rediss://`, `unix://`): one server.
- `redis+cluster://host:port[,host:port...]`: a Redis Cluster. The listed nodes are only
  seeds; the client discovers the rest and follows slot moves and failovers.
- `redis+sentinel://host:port[,host:port...]/service[/db]`: the primary that the
  Sentinels name for `service`, looked up again after every failover.

User and password may precede the first host (`redis+cluster://:secret@h1:7000,h2:7000`);
`?` options are not read. Every per-user key and channel carries the user's hash tag, so
whatever a command touches for one user lives in one Cluster slot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError

Kind = Literal["single", "cluster", "sentinel"]
SCHEMES: dict[str, Kind] = {
    "redis": "single",
    "rediss": "single",
    "unix": "single",
    "redis+cluster": "cluster",
    "redis+sentinel": "sentinel",
}
DEFAULT_PORT = {"single": 6379, "cluster": 6379, "sentinel": 26379}


@dataclass(frozen=True)
class RedisAddress:
    """A parsed REDIS_URL."""

    kind: Kind
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def auth(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password}


def parse_redis_url(url: str) -> RedisAddress:
    """Split REDIS_URL into what the clients need; ValueError says what is wrong."""
    scheme, sep, rest = url.partition("://")
    kind = SCHEMES.get(scheme.lower())
    if not sep or kind is None:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}")
    if kind == "single":
        return RedisAddress("single", url)
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    username, _, password = userinfo.partition(":")
    netloc, _, path = location.partition("/")
    path = path.split("?", 1)[0]
    hosts = tuple(_host_port(part, DEFAULT_PORT[kind]) for part in netloc.split(",") if part)
    if not hosts:
        raise ValueError("name at least one host:port")
    parts = [unquote(p) for p in path.split("/") if p]
    service, db = "", 0
    if kind == "sentinel":
        if not parts:
            raise ValueError("name the Sentinel service: redis+sentinel://host:port/service")
        service, parts = parts[0], parts[1:]
    if parts:
        if len(parts) > 1 or not parts[0].isdigit():
            raise ValueError(f"unexpected path {path!r}")
        db = int(parts[0])
    if kind == "cluster" and db:
        raise ValueError("a Redis Cluster has only database 0")
    return RedisAddress(
        kind,
        url,
        hosts,
        service,
        db,
        unquote(username) or None,
        unquote(password) or None,
    )


def _host_port(text: str, default: int) -> tuple[str, int]:
    split = urlsplit(f"//{text}")
    try:
        port = split.port or default
    except ValueError as exc:
        raise ValueError(f"bad port in {text!r}") from exc
    if not split.hostname:
        raise ValueError(f"no host in {text!r}")
    return split.hostname, port


def command_client(url: str, *, max_connections: int, **options: Any) -> Redis:
    """A client for ordinary commands, sharing `max_connections` connections.

    For a Cluster this is a RedisCluster, typed as Redis: it takes the same commands,
    routed by key, and Longtail never sends one that spans two users' slots.
    """
    address = parse_redis_url(url)
    if address.kind == "cluster":
        # Not capped: a Cluster node's pool raises at its cap instead of waiting.
        return cast(Redis, _cluster(address, **options))
    if address.kind == "sentinel":
        return primary_client(address, max_connections=max_connections, **options)
    # A burst waits briefly for a free connection instead of failing at once.
    # from_pool: the client owns the pool, so closing the client closes its connections.
    return Redis.from_pool(
        BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5, **options)
    )


def primary_client(address: RedisAddress, **options: Any) -> Redis:
    """The Sentinel-named primary; each new connection asks the Sentinels where it is."""
    sentinel = Sentinel(
        list(address.hosts),
        sentinel_kwargs={"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
    )
    client: Redis = sentinel.master_for(
        address.service, redis_class=SentinelPrimary, db=address.db, **address.auth, **options
    )
    return client


class SentinelPrimary(Redis):
    """A client of the Sentinel-named primary that, closed, also closes its Sentinel
    connections (redis-py leaves those open)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for client in getattr(manager, "sentinels", ()):
            await client.aclose()


def _cluster(address: RedisAddress, **options: Any) -> RedisCluster:
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.hosts],
        # One range failing over must not stop the others.
        require_full_coverage=False,
        **address.auth,
        **options,
    )
    # RedisCluster hard-codes its connection class; the nodes it discovers are made
    # from these kwargs (the same dict its NodesManager holds).
    cluster.nodes_manager.connection_kwargs["connection_class"] = GuardedConnection
    for node in cluster.startup_nodes:
        node.connection_class = GuardedConnection
    return cluster


class GuardedConnection(Connection):
    """A connection whose transport vanished mid-use raises ConnectionError.

    Under a burst of concurrent commands redis-py 8.1's Cluster client can write to or
    read from a connection another task has just disconnected, and that surfaces as
    AttributeError/TypeError from asyncio's internals (redis-py issue 4287 and kin):
    past the client's own retries and past every `except RedisError` of ours. It is a
    lost connection, and is reported as one.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (AttributeError, TypeError) as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection lost while writing: {exc}") from exc

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except (AttributeError, TypeError) as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection lost while reading: {exc}") from exc


def cluster_client(url: str, **options: Any) -> RedisCluster:
    """The Cluster client itself (the subscriber reads its slot map)."""
    return _cluster(parse_redis_url(url), **options)
