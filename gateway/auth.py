"""Who is asking: a session token from the cookie or the Authorization header.

The token is looked up in the Redis session cache (chatcore writes it at login and
deletes it at logout, so a logout holds on every gateway); on a miss chatcore decides.
What Redis said is kept in the process while this gateway would hear the logout
(gateway.session_cache), so a client costs a lookup every few seconds, not one per
request. The lookups themselves are batched: those that arrive while one round trip is
out share the next (longtail.batching), as after a reconnect, when every entry is gone
at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from tornado.httputil import HTTPServerRequest

from gateway.chatcore_client import ChatcoreClient
from gateway.session_cache import SessionCache
from longtail.batching import Batcher
from longtail.errors import ApiError
from longtail.wire import Keys

log = logging.getLogger("longtail.gateway.auth")

COOKIE = "longtail_session"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    # SHA-256 of the token it came with: a logout closes this session's connections.
    session: str = ""


def request_token(request: HTTPServerRequest) -> str | None:
    """The session token: `Authorization: Bearer ...` first, else the session cookie."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    morsel = request.cookies.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


class Authenticator:
    def __init__(
        self, redis: Redis, keys: Keys, chatcore: ChatcoreClient, sessions: SessionCache
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._chatcore = chatcore
        self.sessions = sessions
        # Session key -> (the cached session or None, its PTTL in ms).
        self._lookups: Batcher[str, tuple[bytes | None, int]] = Batcher(self._look_up)

    async def aclose(self) -> None:
        """Shutdown: no lookup left running on the Redis client about to close."""
        await self._lookups.aclose()

    async def user(self, token: str | None) -> User:
        """The token's user, or a 401."""
        if not token:
            raise ApiError(401, "unauthorized", "Log in first: no session token was sent.")
        digest = hashlib.sha256(token.encode()).hexdigest()
        user = self.sessions.get(digest)
        if user is not None:
            return user
        # Taken before the lookup is queued, so before it goes out: keep() needs that.
        mark = self.sessions.mark()
        try:
            cached, remaining_ms = await self._lookups.submit(self._keys.session(digest))
        except RedisError as exc:
            log.warning("session cache unavailable, asking chatcore: %s", exc)
            cached = None
        if not cached:
            data = await self._chatcore.call(
                "POST", "/internal/sessions/verify", body={"token": token}
            )
            return User(int(data["id"]), str(data["username"]), digest)
        data = json.loads(cached)
        user = User(int(data["id"]), str(data["username"]), digest)
        if remaining_ms > 0:  # chatcore always sets an expiry; none or gone: keep nothing
            self.sessions.keep(user, mark, remaining_ms / 1000)
        return user

    async def _look_up(self, keys: list[str]) -> list[tuple[bytes | None, int]]:
        # No MULTI: a Cluster client would need one connection per slot for it.
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        replies = await pipe.execute()
        return [(replies[i], int(replies[i + 1])) for i in range(0, len(replies), 2)]
