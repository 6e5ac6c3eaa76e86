"""Who is asking: a session token from the cookie or the Authorization header.

The token is looked up in the Redis session cache (chatcore writes it at login and
deletes it at logout, so a logout holds on every gateway); on a miss chatcore decides.
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
    def __init__(self, redis: Redis, keys: Keys, chatcore: ChatcoreClient) -> None:
        self._redis = redis
        self._keys = keys
        self._chatcore = chatcore

    async def user(self, token: str | None) -> User:
        """The token's user, or a 401."""
        if not token:
            raise ApiError(401, "unauthorized", "Log in first: no session token was sent.")
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            cached = await self._redis.get(self._keys.session(digest))
        except RedisError as exc:
            log.warning("session cache unavailable, asking chatcore: %s", exc)
            cached = None
        data = (
            json.loads(cached)
            if cached
            else await self._chatcore.call(
                "POST", "/internal/sessions/verify", body={"token": token}
            )
        )
        return User(int(data["id"]), str(data["username"]), digest)
