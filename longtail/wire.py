"""The Redis contract between chatcore (the publisher) and the gateways (the subscribers).

Keys of one user share a hash tag (`{u:42}`) so they stay in one slot on a Redis Cluster.

- `<prefix>:{u:ID}:ch`   pub/sub channel; each message is `<seq>:<published ms>:<event
                         JSON>`, so a gateway reads the seq (and the publish time, for its
                         latency metric) without decoding the JSON, and forwards the JSON
                         bytes to every transport untouched.
- `<prefix>:{u:ID}:buf`  sorted set, score = seq, member = event JSON: the hot buffer of
                         the user's most recent events, used for catch-up.
- `<prefix>:{u:ID}:head` the highest seq published for the user (a lower bound of the
                         true head: chatcore's database is the authority).
- `<prefix>:sess:HASH`   session cache: JSON `{id, username}`, written only by chatcore.
- `<prefix>:{u:ID}:on`   sorted set of the gateways holding the user, score = expiry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """A durable event as it travels: its seq and its JSON object, already encoded."""

    seq: int
    data: bytes
    # Unix time of the publish, for events that came through pub/sub (not catch-up).
    published: float | None = None

    def to_message(self, now: float | None = None) -> bytes:
        return b"%d:%d:%s" % (
            self.seq,
            int(1000 * (time.time() if now is None else now)),
            self.data,
        )

    @classmethod
    def from_message(cls, message: bytes) -> Event:
        """Parse a pub/sub payload; raises ValueError on anything else."""
        seq, sep, rest = message.partition(b":")
        published, sep2, data = rest.partition(b":")
        if not (sep and sep2 and data):
            raise ValueError("not a <seq>:<ms>:<json> event message")
        return cls(int(seq), data, int(published) / 1000)


# Ephemeral events (typing, presence) ride the same channels as `e:<json>`: no seq, never
# stored, never caught up; a client that misses one just shows slightly stale state.
EPHEMERAL = b"e:"


def ephemeral_message(data: bytes) -> bytes:
    return EPHEMERAL + data


# A logout, as `x:<session hash>` on the user's channel: every gateway closes the held
# connections that session opened (other sessions of the same user stay).
REVOKED = b"x:"


def revoked_message(session: str) -> bytes:
    return REVOKED + session.encode()


@dataclass(frozen=True)
class Keys:
    """Names of everything Longtail keeps in Redis, under one configurable prefix."""

    prefix: str = "lt"

    def channel(self, user_id: int) -> str:
        return f"{self.prefix}:{{u:{user_id}}}:ch"

    def buffer(self, user_id: int) -> str:
        return f"{self.prefix}:{{u:{user_id}}}:buf"

    def head(self, user_id: int) -> str:
        return f"{self.prefix}:{{u:{user_id}}}:head"

    def session(self, token_hash: str) -> str:
        return f"{self.prefix}:sess:{token_hash}"

    def presence(self, user_id: int) -> str:
        """The gateways holding the user now (sorted set, score = expiry)."""
        return f"{self.prefix}:{{u:{user_id}}}:on"

    def rate(self, name: str, subject: str) -> str:
        """A rate limit's counter for one subject (a user id, a username, an address)."""
        return f"{self.prefix}:rate:{name}:{subject}"

    def revocations(self) -> str:
        """Every logout, announced to every gateway (besides the user's own channel), so
        a gateway may keep any session it verified, not only those of users it holds."""
        return f"{self.prefix}:revoked"

    def control(self, gateway_id: str) -> str:
        """A gateway's own channel: keeps its subscriber alive and carries watchdog pings."""
        return f"{self.prefix}:gw:{gateway_id}"

    def user_of_channel(self, channel: bytes) -> int | None:
        text = channel.decode()
        start = f"{self.prefix}:{{u:"
        if text.startswith(start) and text.endswith("}:ch"):
            return int(text[len(start) : -len("}:ch")])
        return None
