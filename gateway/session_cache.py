"""Sessions this gateway verified, kept in the process for as long as it would hear
their logout.

Why: every request used to look its token up in Redis (chatcore's session cache), and
for a client polling at an interval that round trip was about a third of the gateway's
CPU per poll (`python -m bench.gateway_only`); for a client that sends here and listens
elsewhere, it was 9% of the sending gateway's CPU per POST (issue 5's profile). A logout
deletes chatcore's key and then announces itself on the revocations channel, which
every gateway subscribes for its whole life (chatcore.sessions.Sessions.revoke; a
logout that cannot be announced fails). So a gateway whose subscription to that channel
was confirmed before its lookup went out hears every logout that could follow the
lookup. An entry is therefore made only then, and only if no logout was heard while the
lookup was in flight. It lives as long as that same subscription, on a connection not
known to be lost: a reconnect or a slot move ends every entry, since pub/sub may lose
an announcement there. It also ends with the session's own expiry, and after MAX_AGE in
any case: what the checks cannot see (a subscriber connection that went silent without
closing, until the watchdog replaces it) is trusted no longer than that, since the next
lookup finds the key gone.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from gateway.auth import User
    from gateway.hub import Hub

# Seconds an entry is trusted at most: long enough that a client polling every second
# costs a Redis lookup every tenth poll, short enough to bound a logout missed on a
# subscriber connection that went silent (the watchdog takes up to 3 pings to notice).
MAX_AGE = 10.0


class Mark(NamedTuple):
    """The hub's counts when a lookup went out (SessionCache.mark)."""

    confirmations: int
    revocations: int


class _Entry(NamedTuple):
    user: User
    confirmed: int  # the revocations channel's confirmation this entry relies on
    expires: float


class SessionCache:
    """Token hash -> User, each entry tied to the subscription that carries its logout.

    Entries go into `_current`; every MAX_AGE it becomes `_previous` and the older one is
    dropped whole, so entries of users who left cost nothing to evict.
    """

    def __init__(self, hub: Hub, max_age: float = MAX_AGE) -> None:
        self._hub = hub
        self._max_age = max_age
        self._current: dict[str, _Entry] = {}
        self._previous: dict[str, _Entry] = {}
        self._rotate_at = 0.0
        self.hits = 0
        hub.on_revoked = self.forget

    def get(self, session: str) -> User | None:
        """The session's user if an entry still holds, else None (look it up)."""
        entry = self._current.get(session) or self._previous.get(session)
        if entry is None:
            return None
        channel = self._hub.revocations_channel
        if (
            channel.confirmed != entry.confirmed
            or not channel.listening
            or time.monotonic() >= entry.expires
        ):
            self.forget(session)
            return None
        self.hits += 1
        return entry.user

    def mark(self) -> Mark:
        """Taken just before a lookup is sent; `keep` needs it."""
        return Mark(self._hub.confirmations, self._hub.revocations)

    def keep(self, user: User, mark: Mark, remaining: float) -> None:
        """Remember what a lookup sent after `mark` said, if this gateway would hear the
        session's logout from then on; `remaining`: seconds the session has left."""
        hub = self._hub
        if hub.revocations != mark.revocations:
            return  # a logout was heard meanwhile: maybe this session's
        channel = hub.revocations_channel
        if not channel.listening:
            return
        if channel.confirmed > mark.confirmations:
            return  # not subscribed before the lookup went out
        now = time.monotonic()
        if now >= self._rotate_at:
            self._previous, self._current = self._current, {}
            self._rotate_at = now + self._max_age
        self._current[user.session] = _Entry(
            user, channel.confirmed, now + min(self._max_age, remaining)
        )

    def forget(self, session: str) -> None:
        """The session logged out (heard on the revocations or its user's channel)."""
        self._current.pop(session, None)
        self._previous.pop(session, None)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
