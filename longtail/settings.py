"""Configuration enters once: a typed settings object read from the environment at start-up.

Every variable has a documented default (see README.md, "Configuration"). A wrong value
stops start-up with a one-line ConfigError naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from longtail.redisconn import parse_redis_url

T = TypeVar("T")

DEV_SECRET = "longtail-dev-secret"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _number(raw: str, kind: type[int] | type[float], expected: str) -> float:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"must be {expected}") from None


def _positive_float(raw: str) -> float:
    value = _number(raw, float, "a positive number")
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _positive_int(raw: str) -> int:
    value = int(_number(raw, int, "a positive integer"))
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(_number(raw, int, "a whole number, 0 or more"))
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _non_negative_float(raw: str) -> float:
    value = _number(raw, float, "a number of seconds, 0 or more")
    if value < 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _port(raw: str) -> int:
    value = int(_number(raw, int, "a TCP port (0-65535)"))
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port (0-65535)")
    return value


def _redis_url(raw: str) -> str:
    try:
        parse_redis_url(raw)
    except ValueError as exc:
        raise ValueError(
            f"must be a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// "
            f"URL ({exc})"
        ) from exc
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return raw.rstrip("/")


def database_url(raw: str) -> str:
    """Accept the URLs people write and pick the async driver we ship."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise ValueError("must be a URL such as sqlite:///longtail.sqlite3 or postgresql://...")
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    raise ValueError("must be a sqlite:// or postgresql:// URL")


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _networks(raw: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks, or `*` for any peer; empty: none."""
    networks = []
    for item in (n.strip() for n in raw.split(",")):
        if item == "*":
            networks.append(item)
        elif item:
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an address or network (e.g. 10.0.0.0/8, ::1, or *)"
                ) from None
    return tuple(networks)


def _str(raw: str) -> str:
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything a chatcore or gateway process needs, with the defaults of `longtail dev`."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite+aiosqlite:///longtail.sqlite3"
    chatcore_url: str = "http://127.0.0.1:8700"
    port: int = 8080
    host: str = "0.0.0.0"
    chatcore_host: str = "127.0.0.1"
    secret: str = DEV_SECRET
    redis_prefix: str = "lt"
    # Long-poll: the wait when the client names none, and the longest it may ask for.
    # Under the 60 s proxy_read_timeout most proxies (and deploy/nginx.conf) use.
    poll_timeout: float = 25.0
    poll_timeout_max: float = 55.0
    # Home routers and proxies close connections idle for 30-60 s; 15 s keeps streams alive.
    heartbeat: float = 15.0
    # A stream is closed cleanly after this long (jittered) and the client resumes from
    # its cursor: bounds per-connection state and lets a load balancer rebalance.
    stream_max_age: float = 600.0
    # On SIGTERM: the longest a gateway takes to hand its clients over and exit, and the
    # window over which their reconnects are spread (so no gateway gets them all at once).
    drain_seconds: float = 10.0
    drain_spread: float = 5.0
    # The gateway pings its own Redis subscription this often; three silent intervals
    # mean the connection is dead. A gateway that has lost Redis this long hands its
    # clients to the other gateways (they would otherwise wait for events it cannot hear).
    redis_ping_interval: float = 5.0
    redis_lost_drain_after: float = 5.0
    # Hot buffer of recent events per user in Redis, so catch-up rarely reaches chatcore.
    buffer_size: int = 256
    buffer_ttl: int = 3600
    # Events queued for one connection before it counts as a slow consumer and is closed.
    mailbox_size: int = 256
    # Long-polls reconnect every few seconds; keeping the channel a little longer saves
    # an UNSUBSCRIBE/SUBSCRIBE round trip per poll.
    unsubscribe_grace: float = 5.0
    max_message_chars: int = 4000
    max_request_bytes: int = 65536
    session_ttl: int = 30 * 24 * 3600
    # Abuse limits. Rates are shared by all gateways (Redis); connection caps are per
    # gateway. The total stays under the 20,000 open files a process may hold.
    sends_per_minute: int = 120
    friend_requests_per_hour: int = 60
    logins_per_15min: int = 20
    max_connections_per_user: int = 20
    max_connections_per_ip: int = 500
    max_connections: int = 18000
    # argon2id cost: RFC 9106's "low memory" profile (3 passes over 64 MiB) by default.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    allowed_origins: tuple[str, ...] = ()
    # Peers whose X-Real-IP / X-Forwarded-For / X-Forwarded-Proto are believed (the load
    # balancer's addresses): loopback, where deploy/'s nginx and HAProxy run.
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Testing only: chatcore exits right after this many committed writes, before
    # publishing them (0: never). The chaos tests prove the outbox on it.
    fault_exit_after_commits: int = 0
    log_level: str = "INFO"
    # JSON lines for log collectors; `longtail dev` prints plain text unless this is set.
    log_format: str = "json"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, cast) in _ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = cast(raw)
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r}: {exc}") from None
        settings = cls(**values)
        return settings.with_(**overrides) if overrides else settings.validated()

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes).validated()

    def validated(self) -> Settings:
        if self.poll_timeout > self.poll_timeout_max:
            raise ConfigError(
                "LONGTAIL_POLL_TIMEOUT must not exceed LONGTAIL_POLL_TIMEOUT_MAX "
                f"({self.poll_timeout} > {self.poll_timeout_max})"
            )
        if not self.secret:
            raise ConfigError("LONGTAIL_SECRET must not be empty")
        return self

    @property
    def chatcore_port(self) -> int:
        return urlsplit(self.chatcore_url).port or (
            443 if self.chatcore_url.startswith("https") else 80
        )

    @property
    def uses_dev_secret(self) -> bool:
        return self.secret == DEV_SECRET


def _level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _log_format(raw: str) -> str:
    if raw not in ("json", "text"):
        raise ValueError("must be json or text")
    return raw


_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "redis_url": ("REDIS_URL", _redis_url),
    "database_url": ("DATABASE_URL", database_url),
    "chatcore_url": ("CHATCORE_URL", _http_url),
    "port": ("PORT", _port),
    "host": ("HOST", _str),
    "chatcore_host": ("CHATCORE_HOST", _str),
    "secret": ("LONGTAIL_SECRET", _str),
    "redis_prefix": ("LONGTAIL_REDIS_PREFIX", _str),
    "poll_timeout": ("LONGTAIL_POLL_TIMEOUT", _positive_float),
    "poll_timeout_max": ("LONGTAIL_POLL_TIMEOUT_MAX", _positive_float),
    "heartbeat": ("LONGTAIL_HEARTBEAT", _positive_float),
    "stream_max_age": ("LONGTAIL_STREAM_MAX_AGE", _positive_float),
    "drain_seconds": ("LONGTAIL_DRAIN_SECONDS", _positive_float),
    "drain_spread": ("LONGTAIL_DRAIN_SPREAD", _non_negative_float),
    "redis_ping_interval": ("LONGTAIL_REDIS_PING_INTERVAL", _positive_float),
    "redis_lost_drain_after": ("LONGTAIL_REDIS_LOST_DRAIN_AFTER", _non_negative_float),
    "buffer_size": ("LONGTAIL_BUFFER_SIZE", _positive_int),
    "buffer_ttl": ("LONGTAIL_BUFFER_TTL", _positive_int),
    "mailbox_size": ("LONGTAIL_MAILBOX_SIZE", _positive_int),
    "unsubscribe_grace": ("LONGTAIL_UNSUBSCRIBE_GRACE", _non_negative_float),
    "max_message_chars": ("LONGTAIL_MAX_MESSAGE_CHARS", _positive_int),
    "max_request_bytes": ("LONGTAIL_MAX_REQUEST_BYTES", _positive_int),
    "session_ttl": ("LONGTAIL_SESSION_TTL", _positive_int),
    "sends_per_minute": ("LONGTAIL_SENDS_PER_MINUTE", _positive_int),
    "friend_requests_per_hour": ("LONGTAIL_FRIEND_REQUESTS_PER_HOUR", _positive_int),
    "logins_per_15min": ("LONGTAIL_LOGINS_PER_15MIN", _positive_int),
    "max_connections_per_user": ("LONGTAIL_MAX_CONNECTIONS_PER_USER", _positive_int),
    "max_connections_per_ip": ("LONGTAIL_MAX_CONNECTIONS_PER_IP", _positive_int),
    "max_connections": ("LONGTAIL_MAX_CONNECTIONS", _positive_int),
    "argon2_time_cost": ("LONGTAIL_ARGON2_TIME_COST", _positive_int),
    "argon2_memory_kib": ("LONGTAIL_ARGON2_MEMORY_KIB", _positive_int),
    "allowed_origins": ("LONGTAIL_ALLOWED_ORIGINS", _origins),
    "trusted_proxies": ("LONGTAIL_TRUSTED_PROXIES", _networks),
    "fault_exit_after_commits": ("LONGTAIL_FAULT_EXIT_AFTER_COMMITS", _non_negative_int),
    "log_level": ("LONGTAIL_LOG_LEVEL", _level),
    "log_format": ("LONGTAIL_LOG_FORMAT", _log_format),
}

ENV_VARS = {name: var for name, (var, _) in _ENV.items()}

# For load and chaos runs, where every client comes from one address and sends far more
# than a person: the abuse limits would measure themselves instead of the system.
LOAD_TEST_LIMITS = {
    "LONGTAIL_SENDS_PER_MINUTE": "1000000",
    "LONGTAIL_FRIEND_REQUESTS_PER_HOUR": "1000000",
    "LONGTAIL_LOGINS_PER_15MIN": "1000000",
    "LONGTAIL_MAX_CONNECTIONS_PER_USER": "1000",
    "LONGTAIL_MAX_CONNECTIONS_PER_IP": "100000",
}
