"""One gateway, alone, on every transport: RSS per held connection and CPU per request.

    python -m bench.gateway_only [--held 5000,10000,15000] [--transports longpoll,sse,...]
                                 [--tree DIR] [--output FILE]

The gateway is a real `longtail gateway` process on real Redis, measured from /proc. No
chatcore runs: this process plays its part in Redis, as chatcore would (the session
cache for each user, the `head` key, and for events the hot buffer and the PUBLISH), so
the figures are the gateway's own and setting up 15,000 users takes a second.

- held: per transport, a fresh gateway; open idle connections in batches until the
  gateway's own `longtail_held_connections` gauge says they are all held, settle, read
  VmRSS; KiB per held connection = (RSS - RSS after warm-up) / held.
- polls: concurrent keep-alive clients loop on `GET /api/events?cursor=&timeout=0` (an
  interval poll, answered from the hot buffer); completed polls/s and gateway CPU per poll.
- deliver: long-polls and SSE streams receive published events; gateway CPU per event.

`--tree` runs the gateway from another checkout (e.g. a copy taken before a change), so
before/after figures come from the same driver in the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.cluster import (
    HOST,
    REDIS_URL,
    BenchError,
    free_port,
    process_cpu_seconds,
    raise_open_files,
)
from longtail.settings import LOAD_TEST_LIMITS
from longtail.wire import Keys

TRANSPORTS = ("longpoll", "jsonp", "sse", "xhr", "multipart", "iframe", "websocket")
PATHS = {
    "longpoll": "/api/events?cursor=0&timeout=110",
    "jsonp": "/api/events/jsonp?callback=cb&cursor=0&timeout=110",
    "sse": "/api/events/stream?cursor=0",
    "xhr": "/api/events/xhr?cursor=0",
    "multipart": "/api/events/multipart?cursor=0",
    "iframe": "/api/events/iframe?cursor=0",
    "websocket": "/api/events/ws?cursor=0",
}
GAUGE = {"websocket": "websocket"}
BATCH = 250
SETTLE = 1.0
USER_BASE = 1_000_000


class Gateway:
    """A `longtail gateway` child process with its own Redis prefix."""

    def __init__(self, tree: Path, prefix: str, log_dir: Path) -> None:
        self.port = free_port()
        self.prefix = prefix
        env = {
            **os.environ,
            **LOAD_TEST_LIMITS,
            "PYTHONPATH": str(tree),
            "HOST": HOST,
            "REDIS_URL": REDIS_URL,
            # Nobody listens there: the gateway must never need chatcore in this bench.
            "CHATCORE_URL": f"http://{HOST}:{free_port()}",
            "LONGTAIL_REDIS_PREFIX": prefix,
            "LONGTAIL_POLL_TIMEOUT_MAX": "120",
            "LONGTAIL_STREAM_MAX_AGE": "3600",
            "LONGTAIL_HEARTBEAT": "300",
            "LONGTAIL_MAX_CONNECTIONS": "19000",
            "LONGTAIL_LOG_LEVEL": "WARNING",
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"gateway-{self.port}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "longtail.cli", "gateway", "--port", str(self.port)],
                cwd=tree,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_open_files,
                start_new_session=True,
            )

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError("no VmRSS")

    def cpu(self) -> float:
        return process_cpu_seconds(self.process.pid)

    async def ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"gateway exited: {self.log.read_text()[-2000:]}")
            try:
                status, _, _ = await request(self.port, "/healthz", "")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise BenchError("gateway not ready")

    async def held(self, transport: str) -> int:
        _, _, body = await request(self.port, "/metrics", "")
        needle = f'longtail_held_connections{{transport="{transport}"}} '.encode()
        for line in body.splitlines():
            if line.startswith(needle):
                return int(float(line[len(needle) :]))
        return 0

    async def stop(self) -> None:
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 5)


def token_for(user: int) -> str:
    return f"bench-token-{user}"


async def seed_users(redis: Redis, keys: Keys, count: int) -> None:
    """What chatcore's login leaves in Redis: the session cache and the user's head."""
    pipe = redis.pipeline(transaction=False)
    for i in range(count):
        user = USER_BASE + i
        digest = hashlib.sha256(token_for(user).encode()).hexdigest()
        pipe.set(keys.session(digest), json.dumps({"id": user, "username": f"u{user}"}), ex=3600)
        pipe.set(keys.head(user), 0, ex=3600)
        if len(pipe) >= 2000:
            await pipe.execute()
    await pipe.execute()


async def publish(redis: Redis, keys: Keys, user: int, seq: int) -> None:
    """What chatcore does after a commit: buffer, head, PUBLISH."""
    data = b'{"seq":%d,"type":"message","body":"hello"}' % seq
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(keys.buffer(user), {data: seq})
    pipe.set(keys.head(user), seq, ex=3600)
    pipe.expire(keys.buffer(user), 3600)
    pipe.spublish(keys.channel(user), b"%d:%d:%s" % (seq, int(time.time() * 1000), data))
    await pipe.execute()


def request_bytes(port: int, path: str, user: int | None, websocket: bool = False) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    if user is not None:
        lines.append(f"Authorization: Bearer {token_for(user)}")
    if websocket:
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: http://{HOST}:{port}",
        ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def request(port: int, path: str, token: str) -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        extra = f"Authorization: Bearer {token}\r\n" if token else ""
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n".encode()
        )
        status, body = await read_response(reader)
        return status, b"", body
    finally:
        writer.close()


class Held:
    """Idle connections of one transport; streams have their prelude read."""

    def __init__(self, gateway: Gateway, transport: str) -> None:
        self.gateway = gateway
        self.transport = transport
        self.writers: list[asyncio.StreamWriter] = []

    async def open_one(self, user: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.gateway.port, limit=1 << 16)
        ws = self.transport == "websocket"
        writer.write(request_bytes(self.gateway.port, PATHS[self.transport], user, ws))
        self.writers.append(writer)
        if self.transport not in ("longpoll", "jsonp"):
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 101")):
                raise BenchError(f"{self.transport}: {head[:200]!r}")

    async def grow(self, target: int) -> None:
        while len(self.writers) < target:
            start = len(self.writers)
            end = min(target, start + BATCH)
            await asyncio.gather(*(self.open_one(USER_BASE + i) for i in range(start, end)))
            deadline = time.monotonic() + 30
            while await self.gateway.held(self.transport) < end:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.transport}: {end} not held in 30s")
                await asyncio.sleep(0.05)

    async def release(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


async def measure_held(
    tree: Path, transport: str, steps: list[int], redis: Redis, log_dir: Path
) -> dict[str, Any]:
    prefix = f"gwo{secrets.token_hex(4)}"
    keys = Keys(prefix)
    await seed_users(redis, keys, max(steps))
    gateway = Gateway(tree, prefix, log_dir)
    try:
        await gateway.ready()
        warm = Held(gateway, transport)  # the first connections' one-off costs
        await warm.grow(200)
        await warm.release()
        deadline = time.monotonic() + 30
        while await gateway.held(transport) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE)
        idle = gateway.rss_kib()
        held = Held(gateway, transport)
        rows = []
        for step in steps:
            await held.grow(step)
            await asyncio.sleep(SETTLE)
            rss = gateway.rss_kib()
            rows.append(
                {"held": step, "rss_kib": rss, "kib_per_conn": round((rss - idle) / step, 2)}
            )
            print(
                f"  {transport:10} {step:6} held: {rss / 1024:7.1f} MiB, "
                f"{(rss - idle) / step:6.2f} KiB/held",
                file=sys.stderr,
                flush=True,
            )
        await held.release()
        return {"transport": transport, "idle_rss_kib": idle, "steps": rows}
    finally:
        await gateway.stop()
        await delete_prefix(redis, prefix)


async def delete_prefix(redis: Redis, prefix: str) -> None:
    batch = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=5000)]
    for i in range(0, len(batch), 5000):
        await redis.delete(*batch[i : i + 5000])


async def poll_loop(port: int, user: int, end: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    req = request_bytes(port, "/api/events?cursor=0&timeout=0", user)
    try:
        while time.monotonic() < end:
            writer.write(req)
            status, _ = await read_response(reader)
            if status != 200:
                raise BenchError(f"poll answered {status}")
            counts[0] += 1
    finally:
        writer.close()


async def measure_polls(
    tree: Path, redis: Redis, log_dir: Path, clients: int, seconds: float
) -> dict[str, Any]:
    prefix = f"gwo{secrets.token_hex(4)}"
    keys = Keys(prefix)
    await seed_users(redis, keys, clients)
    gateway = Gateway(tree, prefix, log_dir)
    try:
        await gateway.ready()
        warm = [0]
        await asyncio.gather(
            *(
                poll_loop(gateway.port, USER_BASE + i, time.monotonic() + 1, warm)
                for i in range(clients)
            )
        )
        counts = [0]
        cpu0, t0 = gateway.cpu(), time.monotonic()
        await asyncio.gather(
            *(poll_loop(gateway.port, USER_BASE + i, t0 + seconds, counts) for i in range(clients))
        )
        cpu, wall = gateway.cpu() - cpu0, time.monotonic() - t0
        result = {
            "clients": clients,
            "polls": counts[0],
            "polls_per_s": round(counts[0] / wall),
            "gateway_cpu_ms_per_poll": round(1000 * cpu / counts[0], 4),
            "polls_per_gateway_cpu_s": round(counts[0] / cpu) if cpu else None,
        }
        print(f"  polls: {result}", file=sys.stderr, flush=True)
        return result
    finally:
        await gateway.stop()
        await delete_prefix(redis, prefix)


async def longpoll_receiver(
    port: int, user: int, stop: asyncio.Event, counts: list[int], done: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    cursor = 0
    try:
        while not stop.is_set():
            writer.write(request_bytes(port, f"/api/events?cursor={cursor}&timeout=5", user))
            status, body = await read_response(reader)
            if status != 200:
                raise BenchError(f"long-poll answered {status}: {body[:200]!r}")
            answer = json.loads(body)
            counts[0] += len(answer["events"])
            cursor = answer["cursor"]
            done[0] += 1
    finally:
        writer.close()


async def sse_receiver(port: int, user: int, stop: asyncio.Event, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(request_bytes(port, "/api/events/stream?cursor=0", user))
    try:
        await reader.readuntil(b"\r\n\r\n")
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"id: "):
                counts[0] += 1
    finally:
        writer.close()


async def measure_delivery(
    tree: Path, redis: Redis, log_dir: Path, transport: str, users: int, events: int, rate: float
) -> dict[str, Any]:
    prefix = f"gwo{secrets.token_hex(4)}"
    keys = Keys(prefix)
    await seed_users(redis, keys, users)
    gateway = Gateway(tree, prefix, log_dir)
    try:
        await gateway.ready()
        stop = asyncio.Event()
        counts, done = [0], [0]
        if transport == "longpoll":
            tasks = [
                asyncio.create_task(
                    longpoll_receiver(gateway.port, USER_BASE + i, stop, counts, done)
                )
                for i in range(users)
            ]
            gauge = "longpoll"
        else:
            tasks = [
                asyncio.create_task(sse_receiver(gateway.port, USER_BASE + i, stop, counts))
                for i in range(users)
            ]
            gauge = "sse"
        deadline = time.monotonic() + 30
        while await gateway.held(gauge) < users:
            if time.monotonic() > deadline:
                raise BenchError("receivers not held")
            await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE)
        cpu0, t0 = gateway.cpu(), time.monotonic()
        seqs = [0] * users
        for n in range(events):
            i = n % users
            seqs[i] += 1
            await publish(redis, keys, USER_BASE + i, seqs[i])
            lag = t0 + (n + 1) / rate - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)
        deadline = time.monotonic() + 20
        while counts[0] < events and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cpu, wall = gateway.cpu() - cpu0, time.monotonic() - t0
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result = {
            "transport": transport,
            "users": users,
            "published": events,
            "delivered": counts[0],
            "events_per_s": round(counts[0] / wall),
            "gateway_cpu_ms_per_event": round(1000 * cpu / max(1, counts[0]), 4),
        }
        if transport == "longpoll":
            result["completed_polls"] = done[0]
            result["gateway_cpu_ms_per_poll"] = round(1000 * cpu / max(1, done[0]), 4)
        print(f"  deliver: {result}", file=sys.stderr, flush=True)
        return result
    finally:
        await gateway.stop()
        await delete_prefix(redis, prefix)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    redis = Redis.from_url(REDIS_URL)
    log_dir = Path(__file__).resolve().parent / "results" / "logs"
    steps = [int(s) for s in args.held.split(",") if s]
    results: dict[str, Any] = {"tree": str(args.tree), "held": [], "when": time.time()}
    try:
        if steps:
            for transport in args.transports.split(","):
                results["held"].append(
                    await measure_held(args.tree, transport, steps, redis, log_dir)
                )
        if args.polls:
            results["polls"] = await measure_polls(args.tree, redis, log_dir, 100, args.seconds)
        if args.deliver:
            results["deliver"] = [
                await measure_delivery(args.tree, redis, log_dir, t, 500, 20_000, 4000.0)
                for t in ("longpoll", "sse")
            ]
    finally:
        await redis.aclose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_only", description=__doc__)
    parser.add_argument("--held", default="5000,10000,15000")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--no-polls", dest="polls", action="store_false")
    parser.add_argument("--no-deliver", dest="deliver", action="store_false")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    raise_open_files()
    try:
        results = asyncio.run(main_async(args))
    except BenchError as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
