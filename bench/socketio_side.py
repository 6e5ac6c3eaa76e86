"""python-socketio's half of `bench.compare`: two bench/socketio_server.py processes on
one Redis channel, and the clients the load generator drives them with (python-socketio's
own AsyncClient, on one shared aiohttp session per phase).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from redis.asyncio import Redis

from bench.api import connector
from bench.cluster import (
    HOST,
    STOP_GRACE,
    BenchError,
    Service,
    free_port,
    raise_open_files,
    wait_ready,
)
from bench.held import BATCH_DEADLINE, ESTABLISHED, connection_states, wait_for
from bench.latency import Audit
from bench.load import Send, SendFailed, as_member
from bench.socketio_server import PING_INTERVAL, PING_TIMEOUT, user_token

TRANSPORTS = ("websocket", "polling")
CONNECT_TIMEOUT = 30.0
CALL_TIMEOUT = 10.0
SETUP_CONCURRENCY = 32
READY_DEADLINE = 30.0
# python-socketio's server may notice a client that went away only when its ping goes
# unanswered: up to a ping interval plus the ping timeout.
SIO_RELEASE_DEADLINE = PING_INTERVAL + PING_TIMEOUT + 15.0
NO_TIMEOUT = aiohttp.ClientTimeout(total=None)


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=connector(), timeout=NO_TIMEOUT)


@dataclass
class SocketioServers:
    """Socket.IO server processes sharing rooms through one Redis channel."""

    log_dir: Path
    redis_url: str
    channel: str = field(default_factory=lambda: f"compare{secrets.token_hex(4)}-socketio")
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    services: list[Service] = field(default_factory=list)
    stopped: list[Service] = field(default_factory=list)

    def spawn(self, name: str) -> Service:
        port = free_port()
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.socketio_server",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--redis-url",
                    self.redis_url,
                    "--channel",
                    self.channel,
                    "--secret",
                    self.secret,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_open_files,
                start_new_session=True,
            )
        return Service(name, port, process, log_path)

    async def start_one(self, name: str) -> Service:
        """A server, answering and subscribed to the channel (so it hears every emit)."""
        service = self.spawn(name)
        self.services.append(service)
        await wait_ready(service, "/healthz")
        # python-socketio starts its Redis listener on the first connection.
        async with client_session() as http:
            probe = await connect(http, service, self.secret, 0, "websocket")
            await hang_up(probe)
        await self.wait_subscribed()
        return service

    async def wait_subscribed(self) -> None:
        redis = Redis.from_url(self.redis_url)
        running = sum(1 for s in self.services if s.process.poll() is None)
        try:

            async def subscribed() -> bool:
                [(_, count)] = await redis.pubsub_numsub(self.channel)
                return int(count) >= running

            await wait_for("the socket.io servers to subscribe", subscribed, READY_DEADLINE)
        finally:
            await redis.aclose()

    async def stop_one(self, service: Service, grace: float = STOP_GRACE) -> None:
        with suppress(ProcessLookupError):
            service.process.terminate()
        try:
            await asyncio.to_thread(service.process.wait, grace)
        except subprocess.TimeoutExpired:
            service.process.kill()
            await asyncio.to_thread(service.process.wait, STOP_GRACE)
        self.services.remove(service)
        self.stopped.append(service)

    async def stop(self) -> None:
        await asyncio.gather(*(self.stop_one(s) for s in list(self.services)))

    def unclean_exits(self) -> list[str]:
        # aiohttp's run_app exits 0 on SIGTERM (GracefulExit).
        return [
            f"{s.name} exited with {s.process.returncode}"
            for s in self.stopped
            if s.process.returncode != 0
        ]

    def log_problems(self) -> dict[str, list[dict[str, Any]]]:
        return {s.name: problems for s in self.stopped if (problems := s.log_problems())}


@asynccontextmanager
async def running_socketio(log_dir: Path, redis_url: str) -> AsyncIterator[SocketioServers]:
    """Two servers ("sio1", "sio2"); stopped on the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    servers = SocketioServers(log_dir, redis_url)
    try:
        await servers.start_one("sio1")
        await servers.start_one("sio2")
        yield servers
    finally:
        await servers.stop()


async def connect(
    http: aiohttp.ClientSession,
    server: Service,
    secret: str,
    user_id: int,
    transport: str,
    on_message: Callable[[Any], Awaitable[None]] | None = None,
) -> socketio.AsyncClient:
    """A connected client of user_id, in its user room once this returns (the server's
    connect handler enters the room before it accepts)."""
    client = socketio.AsyncClient(
        http_session=http, reconnection=False, handle_sigint=False, request_timeout=30
    )
    if on_message is not None:
        client.on("message", on_message)
    try:
        await client.connect(
            f"http://{HOST}:{server.port}",
            auth={"user": user_id, "token": user_token(secret, user_id)},
            transports=[transport],
            wait_timeout=CONNECT_TIMEOUT,
        )
    except socketio.exceptions.ConnectionError as exc:
        raise BenchError(f"socket.io connect to {server.name} failed: {exc}") from exc
    return client


async def until_disconnected(client: socketio.AsyncClient) -> None:
    """Returns when the client's connection ended. Cancelling this leaves the client's
    own tasks running until it is disconnected: awaiting client.wait() directly would
    cancel its read loop along with the waiter, and its write loop would then outlive
    the session it sends on."""
    await asyncio.shield(client.wait())


async def hang_up(client: socketio.AsyncClient) -> None:
    """Close the connection as a browser tab does, without waiting for the long-poll in
    flight to come back: client.disconnect() waits for it, and python-socketio's server
    only answers it at the next ping (up to 25 s later)."""
    await client.eio.disconnect(abort=True)


async def gather_bounded(coros: list[Awaitable[Any]], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def run(coro: Awaitable[Any]) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


def recorder(audit: Any, member: int | None = None) -> Callable[[Any], Awaitable[None]]:
    """A `message` handler recording into the audit (as member's copy for fan-out)."""

    async def on_message(data: Any) -> None:
        received = time.perf_counter()
        event = {"type": "message", "message": data}
        audit.record_event(event if member is None else as_member(event, member), received)

    return on_message


@asynccontextmanager
async def listening(
    servers: SocketioServers,
    server: Service,
    transport: str,
    user_ids: list[int],
    handlers: list[Callable[[Any], Awaitable[None]]],
    audit: Audit,
    room: str | None = None,
) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """One client per user on `server`, each joined to `room` if given; yields tasks
    that end when a client's connection ends (a receiver that died)."""
    async with client_session() as http:
        clients: list[socketio.AsyncClient] = []
        try:
            clients += await gather_bounded(
                [
                    connect(http, server, servers.secret, uid, transport, handler)
                    for uid, handler in zip(user_ids, handlers, strict=True)
                ],
                SETUP_CONCURRENCY,
            )
            if room is not None:
                answers = await gather_bounded(
                    [c.call("join", {"room": room}, timeout=CALL_TIMEOUT) for c in clients],
                    SETUP_CONCURRENCY,
                )
                if any(a != {"ok": True} for a in answers):
                    raise BenchError(f"joining the socket.io room failed: {answers[:3]}")
            tasks = [asyncio.create_task(until_disconnected(c)) for c in clients]
            try:
                yield tasks
            finally:
                ended = sum(1 for t in tasks if t.done())
                if ended:
                    audit.receive_errors.append(f"{ended} socket.io receiver(s) disconnected")
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await asyncio.gather(*(hang_up(c) for c in clients), return_exceptions=True)


@asynccontextmanager
async def senders(
    servers: SocketioServers, server: Service, transport: str, user_ids: list[int]
) -> AsyncIterator[list[socketio.AsyncClient]]:
    async with client_session() as http:
        clients: list[socketio.AsyncClient] = []
        try:
            clients += await gather_bounded(
                [connect(http, server, servers.secret, uid, transport) for uid in user_ids],
                SETUP_CONCURRENCY,
            )
            yield clients
        finally:
            await asyncio.gather(*(hang_up(c) for c in clients), return_exceptions=True)


async def call_send(client: socketio.AsyncClient, data: dict[str, Any]) -> None:
    try:
        answer = await client.call("send", data, timeout=CALL_TIMEOUT)
    except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError) as exc:
        raise SendFailed(f"socket.io send: {exc!r}") from exc
    if answer != {"ok": True}:
        raise SendFailed(f"socket.io send answered {answer!r}")


def direct_sender(clients: list[socketio.AsyncClient], receiver_ids: list[int]) -> Send:
    async def send(pair: int, body: str) -> None:
        await call_send(clients[pair], {"to": receiver_ids[pair], "body": body})

    return send


def room_sender(client: socketio.AsyncClient, room: str) -> Callable[[str], Awaitable[None]]:
    async def send(body: str) -> None:
        await call_send(client, {"room": room, "body": body})

    return send


class SocketioHolder:
    """The held-connection load for a socket.io server, shaped like bench.held.Holder
    (grow_to / users_for / release) so bench.held.hold_steps drives it: each client
    connects, then only answers the server's pings until it is cancelled."""

    def __init__(
        self,
        servers: SocketioServers,
        server: Service,
        transport: str,
        user_ids: list[int],
        conns_per_user: int,
        open_batch: int,
    ) -> None:
        self.servers = servers
        self.gateway = server  # the name hold_steps reads RSS through
        self.transport = transport
        self.user_ids = user_ids
        self.conns_per_user = conns_per_user
        self.open_batch = open_batch
        self.http = client_session()
        self.tasks: list[asyncio.Task[None]] = []
        self.connected = 0
        self.returned_early = 0
        self.failed: list[str] = []

    def users_for(self, held: int) -> list[int]:
        return self.user_ids[: -(-held // self.conns_per_user)]

    async def hold_one(self, index: int) -> None:
        user_id = self.user_ids[index // self.conns_per_user]
        try:
            client = await connect(
                self.http, self.gateway, self.servers.secret, user_id, self.transport
            )
        except BenchError as exc:
            self.failed.append(str(exc))
            return
        self.connected += 1
        try:
            await until_disconnected(client)
            self.returned_early += 1  # only reached when the server ended it
        finally:
            self.connected -= 1
            await hang_up(client)

    async def grow_to(self, target: int) -> float:
        started = time.monotonic()
        while len(self.tasks) < target:
            batch_end = min(target, len(self.tasks) + self.open_batch)
            self.tasks += [
                asyncio.create_task(self.hold_one(i)) for i in range(len(self.tasks), batch_end)
            ]

            async def all_held(count: int = batch_end) -> bool:
                if self.failed or self.returned_early:
                    raise BenchError(
                        f"{len(self.failed)} socket.io connect(s) failed, "
                        f"{self.returned_early} ended while held: {self.failed[:1]}"
                    )
                return (
                    self.connected >= count
                    and connection_states(self.gateway)[ESTABLISHED] >= count
                )

            await wait_for(f"{batch_end} held socket.io connections", all_held, BATCH_DEADLINE)
        return time.monotonic() - started

    async def release(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.close()

        async def all_gone() -> bool:
            return not connection_states(self.gateway)

        try:
            await wait_for(
                "the server to drop the released connections", all_gone, SIO_RELEASE_DEADLINE
            )
        except BenchError as exc:
            states = dict(connection_states(self.gateway))
            raise BenchError(f"{exc}; TCP states left on its port: {states}") from None
