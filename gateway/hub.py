"""The gateway's one Redis subscriber, shared by every connection it holds.

- One pub/sub connection per process. A user's channel is subscribed when their first
  local connection arrives and unsubscribed a grace period after their last one leaves.
- One reader task (never a polling loop) hands each event to the mailboxes of that
  user's connections; it never touches a socket.
- The process's own control channel is always subscribed, so the reader never runs
  out of channels (redis-py's reader stops when the last one goes) and the watchdog can
  check end to end that published messages still arrive.
- On any Redis error the reader reconnects with backoff, re-subscribes every channel,
  and, as each subscription is confirmed, tells its mailboxes to re-read storage:
  whatever was published while we were away is caught up by cursor, never lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gateway.mailbox import Mailbox
from longtail.wire import EPHEMERAL, REVOKED, Event, Keys

log = logging.getLogger("longtail.gateway.hub")

# How long a new connection waits for its SUBSCRIBE to be confirmed before going on
# anyway; if it was not, the confirmation (after a reconnect) triggers a catch-up.
SUBSCRIBE_WAIT = 2.0
# Watchdog: ping our own channel this often; a subscriber that has heard nothing for
# three intervals (pings included) is silently dead (a NAT or proxy dropped it) and is
# replaced.
PING_INTERVAL = 5.0
STALL_PINGS = 3
# Reconnect backoff bounds, jittered so a fleet of gateways does not reconnect in step.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0


class _Channel:
    """Subscription state of one user's channel on this gateway."""

    __slots__ = ("confirmed", "linger", "mailboxes", "user_id")

    def __init__(self, user_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.user_id = user_id
        self.mailboxes: set[Mailbox] = set()
        self.confirmed: asyncio.Future[None] = loop.create_future()
        self.linger: asyncio.TimerHandle | None = None


class Hub:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        unsubscribe_grace: float = 5.0,
        gateway_id: str | None = None,
        ping_interval: float = PING_INTERVAL,
        on_arrive: Callable[[int], None] | None = None,
        on_leave: Callable[[int], None] | None = None,
    ) -> None:
        # Called when a user's first connection arrives on this gateway, and when their
        # last one has been gone for the grace period (presence hooks onto these).
        self.on_arrive = on_arrive
        self.on_leave = on_leave
        self._redis = redis
        self._keys = keys
        self._grace = unsubscribe_grace
        self._ping_interval = ping_interval
        self._stall_after = STALL_PINGS * ping_interval
        self.gateway_id = gateway_id or uuid.uuid4().hex[:12]
        self._control = keys.control(self.gateway_id).encode()
        self._channels: dict[bytes, _Channel] = {}
        self._by_user: dict[int, bytes] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._connected = False
        self._last_heard = 0.0
        self.reconnects = 0
        self.delivered = 0

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="hub-reader")
        self._watchdog = asyncio.create_task(self._watch(), name="hub-watchdog")

    async def stop(self) -> None:
        for task in (self._watchdog, self._reader):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        await self._close_pubsub()

    @property
    def healthy(self) -> bool:
        """Subscribed, and heard from Redis recently."""
        loop = asyncio.get_running_loop()
        return self._connected and loop.time() - self._last_heard < self._stall_after

    async def wait_healthy(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.healthy and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self.healthy

    # -- registering connections --------------------------------------------------

    @asynccontextmanager
    async def listen(self, user_id: int, mailbox: Mailbox) -> AsyncIterator[None]:
        """Route the user's events to `mailbox` while the block runs.

        Returns once the channel is subscribed (or SUBSCRIBE_WAIT has passed), so a
        catch-up read made inside the block cannot miss an event published meanwhile.
        """
        channel = self._add(user_id, mailbox)
        try:
            if not channel.confirmed.done():
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(channel.confirmed), SUBSCRIBE_WAIT)
            yield
        finally:
            self._remove(channel, mailbox)

    def local_users(self) -> list[int]:
        return [c.user_id for c in self._channels.values() if c.mailboxes]

    def channel_count(self) -> int:
        return len(self._channels)

    def connection_count(self) -> int:
        return sum(len(c.mailboxes) for c in self._channels.values())

    def close_all(self, reason: str) -> None:
        for channel in self._channels.values():
            for mailbox in channel.mailboxes:
                mailbox.close(reason)

    def _add(self, user_id: int, mailbox: Mailbox) -> _Channel:
        name = self._by_user.get(user_id)
        channel = self._channels.get(name) if name is not None else None
        if channel is None:
            name = self._keys.channel(user_id).encode()
            channel = _Channel(user_id, asyncio.get_running_loop())
            self._channels[name] = channel
            self._by_user[user_id] = name
            self._send("subscribe", name)
            if self.on_arrive is not None:
                self.on_arrive(user_id)
        elif channel.linger is not None:
            channel.linger.cancel()
            channel.linger = None
        channel.mailboxes.add(mailbox)
        return channel

    def _remove(self, channel: _Channel, mailbox: Mailbox) -> None:
        channel.mailboxes.discard(mailbox)
        if not channel.mailboxes and channel.linger is None:
            loop = asyncio.get_running_loop()
            channel.linger = loop.call_later(self._grace, self._drop, channel)

    def _drop(self, channel: _Channel) -> None:
        channel.linger = None
        if channel.mailboxes:
            return
        name = self._by_user.pop(channel.user_id)
        del self._channels[name]
        self._send("unsubscribe", name)
        if self.on_leave is not None:
            self.on_leave(channel.user_id)

    def _send(self, command: str, name: bytes) -> None:
        """Fire a (UN)SUBSCRIBE; while disconnected, the reconnect sends the full set."""
        pubsub = self._pubsub
        if pubsub is None or not self._connected:
            return
        task = asyncio.create_task(self._command(pubsub, command, name))
        task.add_done_callback(_log_failure)

    async def _command(self, pubsub: PubSub, command: str, name: bytes) -> None:
        try:
            await getattr(pubsub, command)(name)
        except (RedisError, OSError) as exc:
            # The reader sees the same broken connection and reconnects.
            log.info("%s %s failed: %s", command, name.decode(), exc)

    # -- the reader -------------------------------------------------------------------

    async def _read_forever(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                pubsub = await self._connect()
                backoff = BACKOFF_MIN
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._handle(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._connected = False
                log.warning("redis subscriber lost (%s); reconnecting in %.2fs", exc, backoff)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connect(self) -> PubSub:
        await self._close_pubsub()
        loop = asyncio.get_running_loop()
        for channel in self._channels.values():
            if channel.confirmed.done():
                channel.confirmed = loop.create_future()
        pubsub = self._pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._control, *self._channels)
        self._connected = True
        self._last_heard = loop.time()
        if self.reconnects or self._channels:
            log.info("redis subscriber connected, %d user channel(s)", len(self._channels))
        return pubsub

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with suppress(RedisError, OSError):
                await pubsub.aclose()
            self.reconnects += 1

    def _handle(self, message: dict[str, Any]) -> None:
        """One message from redis-py: {"type", "channel": bytes, "data": bytes | int}."""
        self._last_heard = asyncio.get_running_loop().time()
        kind = message["type"]
        name: bytes = message["channel"]
        if kind == "message":
            channel = self._channels.get(name)
            if channel is None:
                return  # the control channel's ping, or a channel we just left
            data: bytes = message["data"]
            if data.startswith(REVOKED):
                session = data[len(REVOKED) :].decode()
                for mailbox in channel.mailboxes:
                    if mailbox.session == session:
                        mailbox.close("logged_out")
                return
            if data.startswith(EPHEMERAL):
                ephemeral = Event(0, data[len(EPHEMERAL) :])
                for mailbox in channel.mailboxes:
                    mailbox.deliver_ephemeral(ephemeral)
                return
            try:
                event = Event.from_message(data)
            except ValueError:
                log.error("ignoring a malformed message on %r", name)
                return
            for mailbox in channel.mailboxes:
                mailbox.deliver(event)
            self.delivered += len(channel.mailboxes)
        elif kind == "subscribe":
            channel = self._channels.get(name)
            if channel is not None and not channel.confirmed.done():
                channel.confirmed.set_result(None)
                # Anything published before this moment is in storage, not in flight
                # to us: the mailboxes re-read from their cursors.
                for mailbox in channel.mailboxes:
                    mailbox.resync()

    # -- the watchdog -----------------------------------------------------------------

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._ping_interval)
            if not self._connected:
                continue
            try:
                await self._redis.publish(self._control, b"ping")
            except (RedisError, OSError) as exc:
                log.info("watchdog ping failed: %s", exc)
            if loop.time() - self._last_heard > self._stall_after and self._reader is not None:
                log.warning("redis subscriber silent for %.1fs; replacing it", self._stall_after)
                self._reader.cancel()
                with suppress(asyncio.CancelledError):
                    await self._reader
                self._connected = False
                self._reader = asyncio.create_task(self._read_forever(), name="hub-reader")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("hub command failed", exc_info=task.exception())
