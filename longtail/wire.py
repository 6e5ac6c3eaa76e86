"""The Redis contract between chatcore (the publisher) and the gateways (the subscribers).

Keys of one user share a hash tag (`{u:42}`) so they stay in one slot on a Redis Cluster.

- `<prefix>:{u:ID}:ch`   pub/sub channel; each message is `<seq>:<event JSON>`, so a
                         gateway reads the seq without decoding the JSON and forwards the
                         JSON bytes to every transport untouched.
- `<prefix>:{u:ID}:buf`  sorted set, score = seq, member = event JSON: the hot buffer of
                         the user's most recent events, used for catch-up.
- `<prefix>:{u:ID}:head` the highest seq published for the user (a lower bound of the
                         true head: chatcore's database is the authority).
- `<prefix>:sess:HASH`   session cache: JSON `{id, username}`, written only by chatcore.
- `<prefix>:presence`    sorted set of online user ids, score = expiry (unix seconds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """A durable event as it travels: its seq and its JSON object, already encoded."""

    seq: int
    data: bytes

    def to_message(self) -> bytes:
        return b"%d:%s" % (self.seq, self.data)

    @classmethod
    def from_message(cls, message: bytes) -> Event:
        """Parse a pub/sub payload; raises ValueError on anything else."""
        head, sep, data = message.partition(b":")
        if not sep or not data:
            raise ValueError("not a <seq>:<json> event message")
        return cls(int(head), data)


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

    def presence(self) -> str:
        return f"{self.prefix}:presence"

    def control(self, gateway_id: str) -> str:
        """A gateway's own channel: keeps its subscriber alive and carries watchdog pings."""
        return f"{self.prefix}:gw:{gateway_id}"

    def user_of_channel(self, channel: bytes) -> int | None:
        text = channel.decode()
        start = f"{self.prefix}:{{u:"
        if text.startswith(start) and text.endswith("}:ch"):
            return int(text[len(start) : -len("}:ch")])
        return None
