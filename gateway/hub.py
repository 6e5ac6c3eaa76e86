"""The gateway's Redis subscriber, shared by every connection it holds.

- One pub/sub connection per Redis shard: on one server (or a Sentinel-named primary)
  that is one connection per process; on a Redis Cluster, one per primary owning a
  channel we need. A user's channel is subscribed (SSUBSCRIBE) when their first local
  connection arrives and unsubscribed a grace period after their last one leaves.
- One reader task per shard (never a polling loop) hands each event to the mailboxes
  of that user's connections; it never touches a socket.
- The revocations channel, where every logout is announced, is subscribed for the
  process's whole life (the session cache relies on it), like a user's channel that
  is never dropped.
- Every shard connection also subscribes the process's own control channel, so a
  reader never runs out of channels (redis-py's reader stops when the last one goes)
  and the watchdog can check end to end, shard by shard, that messages still arrive.
- On any Redis error a shard's reader re-reads the topology, moves channels whose slot
  now lives elsewhere, reconnects with backoff and re-subscribes; as each subscription
  is confirmed, its mailboxes re-read storage: whatever was published while we were
  away (or while a slot moved, or a primary failed over) is caught up by cursor.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from typing import Any

from redis.asyncio.client import PubSub
from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.mailbox import Mailbox
from gateway.shards import Shards, TopologyUnknown
from longtail.wire import EPHEMERAL, REVOKED, Event, Keys

log = logging.getLogger("longtail.gateway.hub")

# How long a new connection waits for its SSUBSCRIBE to be confirmed before going on
# anyway; if it was not, the confirmation (after a reconnect) triggers a catch-up.
SUBSCRIBE_WAIT = 2.0
# Watchdog: ping our own channel this often; a shard that has heard nothing for three
# intervals (pings included) is silently dead (a NAT or proxy dropped it) and is
# replaced.
PING_INTERVAL = 5.0
STALL_PINGS = 3
# Reconnect backoff bounds, jittered so a fleet of gateways does not reconnect in step.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
# While the slot map cannot place a channel (a primary failing over), look again this
# often.
PLACE_RETRY = 0.5


class Channel:
    """Subscription state of one user's channel on this gateway: the handle that
    `Hub.join` returns and `Hub.leave` takes (user 0: the revocations channel).

    Held once per local user for as long as any of their connections is, so it is kept
    small: most users have one connection, stored as is (a set only from the second),
    and the confirmation future exists only while someone waits for it.
    """

    __slots__ = (
        "_members",
        "confirmed",
        "head",
        "linger",
        "name",
        "shard",
        "user_id",
        "waiter",
    )

    def __init__(self, user_id: int, name: bytes) -> None:
        self.user_id = user_id
        self.name = name
        # None, one Mailbox, or a set of them once a second connection arrives.
        self._members: Mailbox | set[Mailbox] | None = None
        # Non-zero once the shard confirmed the subscription: the hub's running count
        # of confirmations at that moment (Hub.confirmations), so a later reader can
        # tell this confirmation from the next. 0 again after a reconnect, a slot move
        # or the drop, until the new confirmation (which triggers a catch-up).
        self.confirmed = 0
        # Created by the first `Hub.subscribed` call that has to wait; settled and
        # dropped at the confirmation.
        self.waiter: asyncio.Future[None] | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.shard: _Shard | None = None
        # The user's newest seq, when this subscription is known to have heard every
        # event after it (see heard_after); negative when unknown, and then changed by
        # every delivery, so that `learned` can tell whether one came during a read.
        self.head = -1

    @property
    def mailboxes(self) -> tuple[Mailbox, ...]:
        """A snapshot: callers may close mailboxes (and so leave) while iterating."""
        members = self._members
        if members is None:
            return ()
        if isinstance(members, Mailbox):
            return (members,)
        return tuple(members)

    def __len__(self) -> int:
        members = self._members
        if members is None:
            return 0
        return 1 if isinstance(members, Mailbox) else len(members)

    def add(self, mailbox: Mailbox) -> None:
        members = self._members
        if members is None:
            self._members = mailbox
        elif isinstance(members, Mailbox):
            if members is not mailbox:
                self._members = {members, mailbox}
        else:
            members.add(mailbox)

    # -- what this subscription has heard, so a new connection can skip its catch-up --

    @property
    def listening(self) -> bool:
        """Subscribed, on a connection not known to be lost: what is published now on
        the channel reaches it (between a lost connection and its replacement nothing
        does)."""
        shard = self.shard
        return self.confirmed != 0 and shard is not None and shard.connected

    def heard_after(self, cursor: int) -> bool:
        """True when no event after `cursor` exists but through this channel: the
        channel learned the user's head was `cursor` from a read made while subscribed,
        has heard nothing after it since, and is still listening. A mailbox joined now
        then needs no catch-up read: what comes next reaches it."""
        return self.head == cursor and self.listening

    def mark(self) -> tuple[int, int]:
        """Taken before a catch-up read; see `learned`."""
        return self.confirmed, self.head

    def learned(self, mark: tuple[int, int], cursor: int) -> None:
        """A read that began at `mark` found nothing after `cursor`: if the channel was
        subscribed before it began and heard nothing during it, `cursor` is the head."""
        if mark[0] != 0 and mark == (self.confirmed, self.head):
            self.head = cursor

    def heard(self, seq: int) -> None:
        """A durable event arrived: the head moves only along an unbroken run."""
        head = self.head
        if head < 0 or seq > head + 1:
            self.forget_head()  # unknown, or a gap (an overtaking publish)
        elif seq == head + 1:
            self.head = seq

    def forget_head(self) -> None:
        """Until a read teaches it again: negative, and unlike any value a read under
        way marked, so that read cannot teach it."""
        self.head = min(self.head, 0) - 1

    def discard(self, mailbox: Mailbox) -> None:
        members = self._members
        if members is mailbox:
            self._members = None
        elif isinstance(members, set):
            members.discard(mailbox)
            if len(members) == 1:
                (self._members,) = members  # back to one: no set to keep
            elif not members:
                self._members = None


class _Shard:
    """One subscriber connection (to one Redis node) and the channels it carries."""

    __slots__ = ("channels", "connected", "last_heard", "leaving", "name", "pubsub", "reader")

    def __init__(self, name: str) -> None:
        self.name = name
        self.channels: set[bytes] = set()
        # SUNSUBSCRIBEs sent on this connection and not yet answered, by channel: their
        # answers are ours, not the node dropping a channel (see Hub._handle).
        self.leaving: dict[bytes, int] = {}
        self.pubsub: PubSub | None = None
        self.reader: asyncio.Task[None] | None = None
        self.connected = False
        self.last_heard = 0.0


class Hub:
    def __init__(
        self,
        shards: Shards,
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
        # Called with a session's hash when its logout is heard (the session cache).
        self.on_revoked: Callable[[str], None] | None = None
        # Running counts, only ever growing: subscriptions confirmed, logouts heard.
        self.confirmations = 0
        self.revocations = 0
        self._shards = shards
        self._keys = keys
        self._grace = unsubscribe_grace
        self._ping_interval = ping_interval
        self._stall_after = STALL_PINGS * ping_interval
        self.gateway_id = gateway_id or uuid.uuid4().hex[:12]
        self._control = keys.control(self.gateway_id).encode()
        self._channels: dict[bytes, Channel] = {}
        # Placed, moved and re-subscribed as users' channels are, but never dropped:
        # `listening` and `confirmed` say since when this gateway hears every logout.
        self.revocations_channel = Channel(0, keys.revocations().encode())
        # Shards by name; `_home` carries the control channel even with no users.
        self._by_name: dict[str, _Shard] = {}
        self._home: _Shard | None = None
        self._unplaced: set[bytes] = set()
        self._placer: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._topology_lock = asyncio.Lock()
        self._started = False
        self.reconnects = 0
        self.delivered = 0

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        revocations = self.revocations_channel
        self._channels[revocations.name] = revocations
        self._place(revocations.name, revocations)
        self._placer = asyncio.create_task(self._place_forever(), name="hub-placer")
        self._watchdog = asyncio.create_task(self._watch(), name="hub-watchdog")

    async def stop(self) -> None:
        self._started = False
        tasks = [self._watchdog, self._placer] + [s.reader for s in self._by_name.values()]
        live = [task for task in tasks if task is not None]
        for task in live:
            task.cancel()
        if live:
            # wait, not `await task` under suppress(CancelledError): that also swallowed
            # a cancellation of stop() itself, which then went on as if not cancelled.
            await asyncio.wait(live)
        for task in live:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        for shard in self._by_name.values():
            await self._close_pubsub(shard)
        await self._shards.aclose()

    @property
    def healthy(self) -> bool:
        """Every shard subscribed and heard from recently, and every channel placed."""
        if self._home is None or self._unplaced:
            return False
        now = asyncio.get_running_loop().time()
        return all(
            s.connected and now - s.last_heard < self._stall_after for s in self._by_name.values()
        )

    @property
    def reachable(self) -> bool:
        """Some shard subscribed and heard from recently: this gateway is not cut off
        from Redis. (One Cluster primary failing over degrades every gateway alike;
        sending clients to another gateway would not help them.)"""
        now = asyncio.get_running_loop().time()
        return any(
            s.connected and now - s.last_heard < self._stall_after for s in self._by_name.values()
        )

    async def wait_healthy(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.healthy and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self.healthy

    def shard_names(self) -> list[str]:
        return sorted(self._by_name)

    # -- registering connections --------------------------------------------------

    def join(self, user_id: int, mailbox: Mailbox) -> Channel:
        """Route the user's events to `mailbox` until `leave(handle, mailbox)`.

        Synchronous, so a held request can register and deregister from plain
        callbacks. The channel is subscribed on the user's first join; await
        `subscribed(handle)` before a catch-up read that must not miss an event
        published meanwhile.
        """
        name = self._keys.channel(user_id).encode()
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = Channel(user_id, name)
            self._place(name, channel)
            if self.on_arrive is not None:
                self.on_arrive(user_id)
        elif channel.linger is not None:
            channel.linger.cancel()
            channel.linger = None
        channel.add(mailbox)
        mailbox.channel = channel
        return channel

    def leave(self, channel: Channel, mailbox: Mailbox) -> None:
        """Undo `join`: once the user's last mailbox leaves, the channel lingers for the
        grace period (the next long-poll is usually on its way), then is unsubscribed."""
        channel.discard(mailbox)
        mailbox.channel = None
        if not len(channel) and channel.linger is None:
            loop = asyncio.get_running_loop()
            channel.linger = loop.call_later(self._grace, self._drop, channel)

    async def subscribed(self, channel: Channel, timeout: float = SUBSCRIBE_WAIT) -> None:
        """Return once the channel's subscription is confirmed, or after `timeout`; if it
        was not confirmed by then, the confirmation (after a reconnect) triggers a
        catch-up."""
        if channel.confirmed:
            return
        waiter = channel.waiter
        if waiter is None:
            waiter = channel.waiter = asyncio.get_running_loop().create_future()
        # asyncio.timeout, not wait_for, here and wherever a wait is bounded: on Python
        # 3.11 a wait_for cancelled as its awaitable completes swallows the cancellation.
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(waiter)

    @asynccontextmanager
    async def listen(self, user_id: int, mailbox: Mailbox) -> AsyncIterator[None]:
        """Route the user's events to `mailbox` while the block runs.

        Returns once the channel is subscribed (or SUBSCRIBE_WAIT has passed), so a
        catch-up read made inside the block cannot miss an event published meanwhile.
        """
        channel = self.join(user_id, mailbox)
        try:
            await self.subscribed(channel)
            yield
        finally:
            self.leave(channel, mailbox)

    def local_users(self) -> list[int]:
        return [c.user_id for c in self._channels.values() if len(c)]

    def channel_count(self) -> int:
        """Users' channels subscribed or lingering (not the revocations channel)."""
        return len(self._channels) - (self.revocations_channel.name in self._channels)

    def channel(self, user_id: int) -> Channel | None:
        """The user's channel on this gateway, while it is joined or lingering."""
        return self._channels.get(self._keys.channel(user_id).encode())

    def mailboxes(self, user_id: int) -> tuple[Mailbox, ...]:
        """The user's connections held here now."""
        channel = self.channel(user_id)
        return channel.mailboxes if channel is not None else ()

    def connection_count(self) -> int:
        return sum(len(c) for c in self._channels.values())

    def close_all(self, reason: str) -> None:
        for channel in list(self._channels.values()):
            for mailbox in channel.mailboxes:
                mailbox.close(reason)

    def _drop(self, channel: Channel) -> None:
        channel.linger = None
        if len(channel):
            return
        name = channel.name
        channel.confirmed = 0  # unsubscribed: whoever kept this handle hears no more
        del self._channels[name]
        self._unplaced.discard(name)
        self._unplace(name, channel)
        if self.on_leave is not None:
            self.on_leave(channel.user_id)

    # -- placing channels on shards ---------------------------------------------------

    def _place(self, name: bytes, channel: Channel) -> None:
        """Put the channel on the shard that owns its slot and subscribe it there."""
        try:
            owner = self._shards.owner(name)
        except TopologyUnknown:
            self._unplaced.add(name)
            return
        shard = self._shard(owner)
        shard.channels.add(name)
        channel.shard = shard
        if shard.connected:
            self._send(shard, "ssubscribe", name)

    def _unplace(self, name: bytes, channel: Channel) -> None:
        shard, channel.shard = channel.shard, None
        if shard is None:
            return
        shard.channels.discard(name)
        if shard.connected:
            _expect_answer(shard, (name,))
            self._send(shard, "sunsubscribe", name)
        if not shard.channels and shard is not self._home:
            self._retire(shard)

    def _shard(self, name: str) -> _Shard:
        shard = self._by_name.get(name)
        if shard is None:
            shard = self._by_name[name] = _Shard(name)
            if self._started:
                shard.reader = asyncio.create_task(self._read_forever(shard), name="hub-reader")
        return shard

    def _retire(self, shard: _Shard) -> None:
        """A shard that carries nothing any more closes its connection."""
        if self._by_name.get(shard.name) is shard:
            del self._by_name[shard.name]
        if shard.reader is not None and shard.reader is not asyncio.current_task():
            shard.reader.cancel()
        task = asyncio.create_task(self._close_pubsub(shard))
        task.add_done_callback(_log_failure)

    def _rebalance(self) -> None:
        """After the topology changed: every channel to the shard that owns it now."""
        home: _Shard | None
        try:
            home = self._shard(self._shards.owner(self._control))
        except TopologyUnknown:
            home = self._home
        old_home, self._home = self._home, home
        for name, channel in self._channels.items():
            try:
                owner = self._shards.owner(name)
            except TopologyUnknown:
                if channel.shard is not None and channel.shard.name not in self._by_name:
                    self._unplace(name, channel)
                self._unplaced.add(name)
                continue
            self._unplaced.discard(name)
            if channel.shard is not None and channel.shard.name == owner:
                continue
            self._unplace(name, channel)
            self._reset(channel)
            self._place(name, channel)
        if old_home is not None and old_home is not home and not old_home.channels:
            self._retire(old_home)

    async def _refresh(self) -> None:
        """Re-read the topology (one refresh at a time) and move channels."""
        async with self._topology_lock:
            try:
                await self._shards.refresh()
            except (RedisError, OSError) as exc:
                log.info("reading the redis topology failed: %s", exc)
                return
            self._rebalance()

    async def _place_forever(self) -> None:
        """Learn the topology at start, then retry channels it could not place."""
        while True:
            if self._home is None or self._unplaced:
                await self._refresh()
            await asyncio.sleep(PLACE_RETRY if self._home is None or self._unplaced else 1.0)

    # -- commands ---------------------------------------------------------------------

    def _send(self, shard: _Shard, command: str, name: bytes) -> None:
        """Fire a (S)(UN)SUBSCRIBE; while disconnected, the reconnect sends the full set."""
        pubsub = shard.pubsub
        if pubsub is None:
            return
        task = asyncio.create_task(self._command(pubsub, command, (name,)))
        task.add_done_callback(_log_failure)

    async def _command(self, pubsub: PubSub, command: str, names: tuple[bytes, ...]) -> None:
        try:
            await getattr(pubsub, command)(*names)
        except (RedisError, OSError) as exc:
            # The reader sees the same broken connection and reconnects.
            log.info("%s failed: %s", command, exc)

    # -- the readers ------------------------------------------------------------------

    async def _read_forever(self, shard: _Shard) -> None:
        backoff = BACKOFF_MIN
        while self._by_name.get(shard.name) is shard:
            try:
                pubsub = await self._connect(shard)
                backoff = BACKOFF_MIN
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._handle_one(shard, message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                shard.connected = False
                log.warning(
                    "redis subscriber %s lost (%s); reconnecting in %.2fs", shard.name, exc, backoff
                )
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, BACKOFF_MAX)
                await self._refresh()
                if not shard.channels and shard is not self._home:
                    self._retire(shard)
                    return

    async def _connect(self, shard: _Shard) -> PubSub:
        await self._close_pubsub(shard)
        for name in shard.channels:
            self._reset(self._channels[name])
        shard.leaving.clear()  # answers the old connection owed never come
        pubsub = shard.pubsub = self._shards.pubsub(shard.name)
        await pubsub.subscribe(self._control)
        # Channels placed here (or moved away) while we awaited are handled in the next
        # round; no await separates the last check from `connected`, after which
        # _place and _unplace send. (The unsubscribes are awaits too: a channel placed
        # during one of them, before this loop checked again, was never subscribed.)
        sent: set[bytes] = set()
        while True:
            pending, gone = shard.channels - sent, sent - shard.channels
            if not pending and not gone:
                break
            for group in _by_slot(pending):
                await pubsub.ssubscribe(*group)
            sent |= pending
            for group in _by_slot(gone):
                _expect_answer(shard, group)
                await pubsub.sunsubscribe(*group)
            sent -= gone
        shard.connected = True
        shard.last_heard = asyncio.get_running_loop().time()
        if self.reconnects or shard.channels:
            log.info(
                "redis subscriber %s connected, %d channel(s)", shard.name, len(shard.channels)
            )
        return pubsub

    def _reset(self, channel: Channel) -> None:
        """The channel's next confirmation must trigger a catch-up."""
        channel.confirmed = 0

    async def _close_pubsub(self, shard: _Shard) -> None:
        pubsub, shard.pubsub = shard.pubsub, None
        shard.connected = False
        if pubsub is not None:
            with suppress(RedisError, OSError):
                await pubsub.aclose()
            self.reconnects += 1

    def _handle_one(self, shard: _Shard, message: dict[str, Any]) -> None:
        """_handle, caught per message: a failure in one (a transport's callback) must not
        end the reader, which would leave its shard connected and silent."""
        try:
            self._handle(shard, message)
        except (RedisError, OSError):
            raise  # the connection's own trouble: the reader reconnects
        except Exception:
            log.exception("hub: a message on %r could not be handled", message.get("channel"))

    def _handle(self, shard: _Shard, message: dict[str, Any]) -> None:
        """One message from redis-py: {"type", "channel": bytes, "data": bytes | int}."""
        shard.last_heard = asyncio.get_running_loop().time()
        kind = message["type"]
        name: bytes = message["channel"]
        if kind == "smessage":
            channel = self._channels.get(name)
            if channel is not None:
                self._deliver(channel, message["data"])
        elif kind == "ssubscribe":
            channel = self._channels.get(name)
            if channel is not None and channel.shard is shard and not channel.confirmed:
                self.confirmations += 1
                channel.confirmed = self.confirmations
                channel.forget_head()  # what was heard before may have a hole now
                waiter, channel.waiter = channel.waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                # Anything published before this moment is in storage, not in flight
                # to us: the mailboxes re-read from their cursors.
                for mailbox in channel.mailboxes:
                    mailbox.resync()
        elif kind == "sunsubscribe":
            waiting = shard.leaving.pop(name, 0)
            if waiting:
                # The answer to our own SUNSUBSCRIBE: the channel may have come back
                # since (its user returned, or the slot map moved it away and back),
                # subscribed again right behind it.
                if waiting > 1:
                    shard.leaving[name] = waiting - 1
                return
            channel = self._channels.get(name)
            if channel is not None and channel.shard is shard:
                # We did not ask: the node gave the slot away (resharding). The channel
                # is subscribed nowhere now; the placer re-reads the slot map until it
                # names the new owner (a node may not know of the move yet: a stale
                # answer is retried, or refused with MOVED) and subscribes it there.
                log.info("redis %s dropped %s (slot moved)", shard.name, name.decode())
                self._reset(channel)
                shard.channels.discard(name)
                channel.shard = None
                self._unplaced.add(name)

    def _deliver(self, channel: Channel, data: bytes) -> None:
        if data.startswith(REVOKED):
            session = data[len(REVOKED) :].decode()
            self.revocations += 1
            if self.on_revoked is not None:
                self.on_revoked(session)
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
            log.error("ignoring a malformed message on user %d's channel", channel.user_id)
            return
        channel.heard(event.seq)
        mailboxes = channel.mailboxes
        for mailbox in mailboxes:
            mailbox.deliver(event)
        self.delivered += len(mailboxes)

    # -- the watchdog -----------------------------------------------------------------

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._started:
            await asyncio.sleep(self._ping_interval)
            if not any(s.connected for s in self._by_name.values()):
                continue
            try:
                # A classic PUBLISH reaches every node of a Cluster: one ping checks
                # every shard connection. Bounded: a black-holed route must not stall
                # the check below. (With wait_for, a stop() that cancelled this loop as
                # its ping returned was swallowed, and the loop went on replacing the
                # readers stop() had just cancelled: see `subscribed`.)
                async with asyncio.timeout(self._ping_interval):
                    await self._shards.publish(self._control, b"ping")
            except (TimeoutError, RedisError, OSError) as exc:
                log.info("watchdog ping failed: %r", exc)
            if not self._started:
                return
            for shard in list(self._by_name.values()):
                silent = loop.time() - shard.last_heard
                if shard.connected and silent > self._stall_after and shard.reader is not None:
                    log.warning(
                        "redis subscriber %s silent for %.1fs; replacing it", shard.name, silent
                    )
                    reader = shard.reader
                    reader.cancel()
                    # wait, not await: the reader's own failure must not end the
                    # watchdog (a cancellation of the watchdog itself still does).
                    await asyncio.wait([reader])
                    if not reader.cancelled() and reader.exception() is not None:
                        log.error(
                            "redis subscriber %s had failed",
                            shard.name,
                            exc_info=reader.exception(),
                        )
                    shard.connected = False
                    if self._by_name.get(shard.name) is shard:
                        shard.reader = asyncio.create_task(
                            self._read_forever(shard), name="hub-reader"
                        )


def _expect_answer(shard: _Shard, names: Iterable[bytes]) -> None:
    """A SUNSUBSCRIBE of `names` is about to go out on the shard's connection."""
    for name in names:
        shard.leaving[name] = shard.leaving.get(name, 0) + 1


def _by_slot(names: Iterable[bytes]) -> list[list[bytes]]:
    """SSUBSCRIBE takes several channels only when they share a slot."""
    groups: dict[int, list[bytes]] = defaultdict(list)
    for name in names:
        groups[key_slot(name)].append(name)
    return list(groups.values())


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("hub task failed", exc_info=task.exception())
