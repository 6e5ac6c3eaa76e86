"""Longtail's half of `bench.compare`: a cluster on any Redis and database, its three
held-connection transports, and its receivers and senders for the shared load shapes.

Built on bench.cluster (processes, /proc), bench.held (holding and counting sockets)
and bench.latency (receivers, audit); only what those do not cover lives here: backends
chosen on the command line, SSE, and held SSE streams and WebSockets.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.asyncio import Redis

from bench.api import User, bounded_gather, call, connector, current_cursor
from bench.cluster import (
    STOP_GRACE,
    Cluster,
    Service,
    free_port,
    throwaway_database,
    wait_ready,
)
from bench.held import (
    HeldResult,
    Holder,
    connection_states,
    held_steps,
    hold_steps,
    wait_for,
)
from bench.latency import (
    Audit,
    Pair,
    Receiver,
    SeqCheck,
    listen_ready,
    receive_longpoll,
    receive_websocket,
)
from bench.load import Send, SendFailed
from longtail.wire import Keys

# Held long-polls ask for HELD_POLL_TIMEOUT, longer than the slowest held phase takes
# (15,000 at ~135 new long-polls/s when chatcore answers every catch-up), so none
# returns before the release; the gateways must allow it.
POLL_TIMEOUT_MAX = 900.0
HELD_POLL_TIMEOUT = 890.0
SETUP_CONCURRENCY = 32
WARM_UP_USERS = 200
# A held-phase gateway drains for up to LONGTAIL_DRAIN_SECONDS (10 s) on SIGTERM; its
# stop time is reported, and only a gateway that outlives this grace is killed.
HELD_STOP_GRACE = 30.0
SEND_TIMEOUT = aiohttp.ClientTimeout(total=10)
# Streams and WebSockets stay open as long as a phase needs them.
NO_TIMEOUT = aiohttp.ClientTimeout(total=None)
TRANSPORTS = ("long-poll", "sse", "websocket")


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=connector(), timeout=NO_TIMEOUT)


@dataclass
class CompareCluster(Cluster):
    """bench.cluster.Cluster on the Redis and database named on the command line."""

    redis_url: str = ""
    database_url: str = ""

    def env(self, port: int, chatcore_port: int) -> dict[str, str]:
        return {
            **super().env(port, chatcore_port),
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
        }

    def spawn_gateway(self, name: str) -> Service:
        """One more gateway outside `services` (a held-phase gateway, stopped on its own)."""
        port = free_port()
        process = self.spawn(
            name, ["gateway", "--port", str(port)], self.env(port, self.chatcore.port)
        )
        return Service(name, port, process, self.log_dir / f"{name}.log")


async def delete_keys(redis_url: str, pattern: str) -> None:
    """Remove the run's keys (sessions live 30 days otherwise)."""
    redis = Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await redis.delete(*batch)
                batch = []
        if batch:
            await redis.delete(*batch)
    finally:
        await redis.aclose()


@asynccontextmanager
async def running_longtail(
    log_dir: Path, redis_url: str, database_url: str
) -> AsyncIterator[CompareCluster]:
    """Chatcore and two gateways on a throw-away database, torn down on the way out."""
    async with throwaway_database(database_url, "compare") as run_database:
        cluster = CompareCluster(
            log_dir, POLL_TIMEOUT_MAX, redis_url=redis_url, database_url=run_database
        )
        try:
            await cluster.start()
            yield cluster
        finally:
            await cluster.stop()
            await delete_keys(redis_url, f"{cluster.prefix}:*")


async def metric_samples(http: aiohttp.ClientSession, gateway: Service) -> list[Sample]:
    """Every sample on the gateway's /metrics, as prometheus_client parses them."""
    async with http.get(f"{gateway.url}/metrics", timeout=SEND_TIMEOUT) as resp:
        text = await resp.text()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


async def held_gauge(http: aiohttp.ClientSession, gateway: Service) -> float | None:
    """longtail_held_connections from the gateway's /metrics (None: not exported)."""
    values = [
        s.value
        for s in await metric_samples(http, gateway)
        if s.name == "longtail_held_connections"
    ]
    return sum(values) if values else None


async def stop_service(service: Service, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after the grace (as Cluster.stop does for its own)."""
    with suppress(ProcessLookupError):
        service.process.terminate()
    try:
        await asyncio.to_thread(service.process.wait, grace)
    except subprocess.TimeoutExpired:
        service.process.kill()
        await asyncio.to_thread(service.process.wait, STOP_GRACE)


# --- receivers -------------------------------------------------------------------------


async def receive_sse(
    http: aiohttp.ClientSession,
    gateway: Service,
    user: User,
    cursor: int,
    audit: Audit,
    listening: asyncio.Event,
) -> None:
    """One Server-Sent Events stream from the cursor (the bench.latency.Receiver shape):
    `id:` + `data:` is an event; named events (`ready`, `heartbeat`) are control."""
    check = SeqCheck(cursor, audit)
    url = f"{gateway.url}/api/events/stream?cursor={cursor}"
    async with http.get(url, headers=user.auth, timeout=NO_TIMEOUT) as resp:
        if resp.status != 200:
            audit.receive_errors.append(f"sse -> {resp.status}: {(await resp.read())[:200]!r}")
            return
        listening.set()
        fields: dict[str, str] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            received = time.perf_counter()
            if "event" in fields or "data" not in fields:
                audit.control_frames += 1
            elif "id" in fields:
                event = json.loads(fields["data"])
                check.accept(event)
                audit.record_event(event, received)
            fields = {}
    audit.receive_errors.append("sse stream ended")


RECEIVERS: dict[str, Receiver] = {
    "long-poll": receive_longpoll,
    "sse": receive_sse,
    "websocket": receive_websocket,
}


@asynccontextmanager
async def listening(
    transport: str,
    gateway: Service,
    users: list[User],
    audits: list[Any],
    redis: Redis,
    keys: Keys,
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """users[i] listens on `gateway` from their current cursor, recording into audits[i];
    yields the receiver tasks once every user's channel is subscribed."""
    async with client_session() as http:
        cursors = await bounded_gather(
            [partial(current_cursor, http, gateway.url, u) for u in users], SETUP_CONCURRENCY
        )
        ready = [asyncio.Event() for _ in users]
        receive = RECEIVERS[transport]
        tasks = [
            asyncio.create_task(receive(http, gateway, user, cursor, audit, event))
            for user, cursor, audit, event in zip(users, cursors, audits, ready, strict=True)
        ]
        try:
            await listen_ready(
                tasks, ready, [Pair(i, u, u) for i, u in enumerate(users)], redis, keys
            )
            yield tasks
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for outcome, audit in zip(outcomes, audits, strict=True):
                if isinstance(outcome, Exception):
                    audit.receive_errors.append(f"receiver failed: {outcome!r}")


# --- senders ---------------------------------------------------------------------------


async def post_message(
    http: aiohttp.ClientSession, gateway: Service, user: User, body: dict[str, Any]
) -> None:
    try:
        async with http.post(
            f"{gateway.url}/api/messages", json=body, headers=user.auth, timeout=SEND_TIMEOUT
        ) as resp:
            await resp.read()
            if resp.status != 201:
                raise SendFailed(f"POST /api/messages -> {resp.status}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise SendFailed(f"POST /api/messages: {exc!r}") from exc


class SocketSender:
    """A sender on its own WebSocket: `send` frames, each awaiting its `sent` answer (as
    a WebSocket client sends, and as socket.io's clients do in its websocket phases).
    The events the socket also carries (the sender's copy of its messages) are read and
    dropped, so the gateway never sees a slow consumer."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def send(self, message: dict[str, Any]) -> None:
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[message["client_id"]] = answer
        try:
            await self.ws.send_str(json.dumps({"type": "send", **message}))
            result = await asyncio.wait_for(answer, SEND_TIMEOUT.total)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise SendFailed(f"websocket send: {exc!r}") from exc
        finally:
            self.waiting.pop(message["client_id"], None)
        if result.get("type") != "sent" or result.get("status") != 201:
            raise SendFailed(f"websocket send answered {result!r}")

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(frame.data)
            if data.get("type") in ("sent", "send_failed"):
                waiter = self.waiting.get(data.get("client_id"))
                if waiter is not None and not waiter.done():
                    waiter.set_result(data)
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(SendFailed("the sender's websocket closed"))


@asynccontextmanager
async def socket_senders(
    http: aiohttp.ClientSession, gateway: Service, users: list[User]
) -> AsyncIterator[list[SocketSender]]:
    """One open WebSocket per sending user on `gateway`, closed on the way out."""
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    try:
        for user in users:
            sockets.append(
                await http.ws_connect(
                    f"{gateway.url}/api/events/ws",
                    headers={**user.auth, "Origin": gateway.url},
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                )
            )
        yield [SocketSender(ws) for ws in sockets]
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def message_poster(
    transport: str, http: aiohttp.ClientSession, gateway: Service, users: list[User]
) -> AbstractAsyncContextManager[list[Callable[[dict[str, Any]], Awaitable[None]]]]:
    """How each of `users` sends on this transport: frames on its own WebSocket for the
    websocket phases, POST /api/messages for the others (a one-way stream or polls)."""
    if transport == "websocket":
        return _socket_posts(http, gateway, users)
    return nullcontext([partial(post_message, http, gateway, user) for user in users])


@asynccontextmanager
async def _socket_posts(
    http: aiohttp.ClientSession, gateway: Service, users: list[User]
) -> AsyncIterator[list[Callable[[dict[str, Any]], Awaitable[None]]]]:
    async with socket_senders(http, gateway, users) as sockets:
        yield [s.send for s in sockets]


def direct_sender(
    posts: list[Callable[[dict[str, Any]], Awaitable[None]]], pairs: list[Pair]
) -> Send:
    """Pair i's sender sends to its receiver (client_id: the body, unique per send)."""

    async def send(pair: int, body: str) -> None:
        await posts[pair]({"to": pairs[pair].receiver.id, "body": body, "client_id": body})

    return send


def room_sender(
    post: Callable[[dict[str, Any]], Awaitable[None]], room_id: int
) -> Callable[[str], Awaitable[None]]:
    """The room's messages, all from one sender (a member)."""

    async def send(body: str) -> None:
        await post({"conversation_id": room_id, "body": body, "client_id": body})

    return send


async def make_room(
    http: aiohttp.ClientSession, base: str, creator: User, members: list[User]
) -> int:
    """A room of creator + members (who must be the creator's friends); its id."""
    room = await call(
        http,
        "POST",
        f"{base}/api/rooms",
        body={"name": "fan-out", "members": [m.id for m in members]},
        headers=creator.auth,
        expect=201,
    )
    return int(room["id"])


# --- held connections ------------------------------------------------------------------


class StreamHolder(Holder):
    """bench.held.Holder for SSE streams and WebSockets: each held connection stays open
    (heartbeats flowing) until it is cancelled; one that ends by itself is counted."""

    def __init__(self, transport: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transport = transport

    async def hold_one(self, index: int) -> None:
        user_index = index // self.conns_per_user
        user = self.users[user_index]
        cursor = self.cursors[user_index]
        try:
            if self.transport == "sse":
                url = f"{self.gateway.url}/api/events/stream?cursor={cursor}"
                async with self.http.get(url, headers=user.auth, timeout=NO_TIMEOUT) as resp:
                    async for _ in resp.content.iter_any():
                        pass
            else:
                async with self.http.ws_connect(
                    f"{self.gateway.url}/api/events/ws?cursor={cursor}",
                    headers={**user.auth, "Origin": self.gateway.url},
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                ) as ws:
                    async for _ in ws:
                        pass
        except (TimeoutError, aiohttp.ClientError):
            pass
        self.returned_early += 1


async def measure_held(
    cluster: CompareCluster,
    transport: str,
    users: list[User],
    cursors: list[int],
    *,
    max_held: int,
    conns_per_user: int,
    open_batch: int,
    redis: Redis,
) -> dict[str, Any]:
    """RSS per held connection on a gateway started for this transport alone (a gateway
    that held connections before keeps that memory for reuse, which would flatter the
    next transport), warmed up the way real clients would, then held in steps."""
    name = f"held-{transport}"
    gateway = cluster.spawn_gateway(name)
    keys = Keys(cluster.prefix)
    result = HeldResult(conns_per_user, HELD_POLL_TIMEOUT)
    held_after_release: float | None = None
    try:
        await wait_ready(gateway, "/readyz")
        async with client_session() as http:
            await bounded_gather(
                [partial(current_cursor, http, gateway.url, u) for u in users[:WARM_UP_USERS]],
                SETUP_CONCURRENCY,
            )

        async def no_connections() -> bool:
            return not connection_states(gateway)

        await wait_for(f"{name} to close the warm-up connections", no_connections, 10)
        args = (gateway, users, cursors, conns_per_user, HELD_POLL_TIMEOUT, redis, keys, open_batch)
        holder = Holder(*args) if transport == "long-poll" else StreamHolder(transport, *args)
        result.idle_rss_kib = gateway.rss_kib()
        result.steps = await hold_steps(holder, held_steps(max_held), result.errors)
        result.returned_early = holder.returned_early
        result.rss_after_release_kib = gateway.rss_kib()
        # What the gateway itself still counts as held once every client has gone.
        async with client_session() as http:
            held_after_release = await held_gauge(http, gateway)
    finally:
        stop_started = time.monotonic()
        await stop_service(gateway, HELD_STOP_GRACE)
        stop_seconds = round(time.monotonic() - stop_started, 1)
    held = result.as_json()
    held["gauge_after_release"] = held_after_release
    held["stop_seconds"] = stop_seconds
    held["server"] = name
    held["exit_code"] = gateway.process.returncode
    held["log_problems"] = gateway.log_problems()
    del held["rehold"]
    return held
