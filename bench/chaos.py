"""Chaos: messages keep flowing while gateways, Redis, chatcore and the database fail.

Three gateways behind nginx (deploy/nginx.conf), chatcore, a Redis of our own (so it
can be restarted) and the database (PostgreSQL behind a proxy that can cut it off, or a
SQLite file). Receivers read over long-poll, SSE, WebSocket and XHR streaming, each
reconnecting from its cursor on any error; senders retry a failed send with the same
client_id, as a browser would. Meanwhile the run SIGKILLs gateways and restarts them,
restarts Redis, lets chatcore die between a commit and its publish (the fault hook)
and restarts it, and cuts the database off for a few seconds. At the end every receiver
must hold every message once, in order.

    python -m bench.chaos [--receivers 40] [--messages 30] [--database-url postgresql://...]

The test suite runs the same engine with small numbers (tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from longtail.settings import LOAD_TEST_LIMITS
from tests.client import Client
from tests.e2e.cluster import Cluster, Proc, base_env, free_port
from tests.e2e.nginx import Nginx
from tests.proxy import FaultyProxy
from tests.streams import read_stream

TRANSPORTS = ("longpoll", "sse", "websocket", "xhr", "jsonp", "multipart", "iframe")
FAULTS = ("kill-gateway", "restart-redis", "kill-gateway", "database-outage", "kill-gateway")
SENDERS = 4


@dataclass
class ChaosConfig:
    receivers: int = 14  # two per transport
    messages: int = 10  # per receiver
    send_gap: float = 0.02  # seconds between sends of one sender
    fault_gap: float = 1.5  # seconds between faults
    database_url: str | None = None  # PostgreSQL (through a cuttable proxy); else SQLite
    outage: float = 2.0  # seconds each Redis/database outage lasts
    deadline: float = 90.0


@dataclass
class ChaosReport:
    messages: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    send_retries: int = 0
    faults: list[str] = field(default_factory=list)
    max_delay: float = 0.0
    slowest: str = ""
    seconds: float = 0.0
    t0: float = field(default_factory=time.monotonic)

    def fault(self, what: str) -> None:
        self.faults.append(f"{what} at +{time.monotonic() - self.t0:.1f} s")

    @property
    def clean(self) -> bool:
        return self.lost == self.duplicated == self.out_of_order == 0

    def summary(self) -> str:
        return (
            f"{self.messages} messages, {self.delivered} delivered, lost {self.lost}, "
            f"duplicated {self.duplicated}, out of order {self.out_of_order}; "
            f"{len(self.faults)} faults ({', '.join(self.faults)}); {self.send_retries} send "
            f"retries; max delivery delay {self.max_delay:.2f} s ({self.slowest}); "
            f"{self.seconds:.1f} s"
        )


class RedisServer:
    """A redis-server of the run's own, so that restarting it harms nobody else."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.proc = Proc(
            "redis",
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            dict(os.environ),
            workdir / "redis.log",
            "",
            "",
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while loop.time() < end:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start:\n" + self.proc.log_tail())


class Receiver:
    """One user reading over one transport, reconnecting from its cursor on any error."""

    def __init__(self, client: Client, transport: str, base: str) -> None:
        self.client = client
        self.transport = transport
        self.base = base
        self.got: list[dict[str, Any]] = []
        self.arrived: dict[str, float] = {}

    @property
    def cursor(self) -> int:
        return self.got[-1]["seq"] if self.got else self.client.cursor

    def take(self, events: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for event in events:
            if "seq" not in event:
                continue
            self.got.append(event)
            if event["type"] == "message":
                self.arrived.setdefault(event["message"]["body"], now)

    async def run(self, http: aiohttp.ClientSession, expected: int, stop: asyncio.Event) -> None:
        while self.count() < expected and not stop.is_set():
            try:
                await READERS[self.transport](self, http, expected)
            except Exception:
                await asyncio.sleep(0.1 + random.random() * 0.2)

    def count(self) -> int:
        return sum(1 for e in self.got if e["type"] == "message")


async def _longpoll(r: Receiver, http: aiohttp.ClientSession, expected: int) -> None:
    r.client.cursor = r.cursor
    resp = await r.client.request("GET", f"/api/events?cursor={r.cursor}&timeout=5", timeout=15)
    if resp.status != 200:
        raise RuntimeError(resp.status)
    r.take(resp.body["events"])


def _stream(kind: str, path: str) -> Any:
    async def read(r: Receiver, http: aiohttp.ClientSession, expected: int) -> None:
        url = r.base + f"{path}?cursor={r.cursor}"
        taken = 0

        def arrived(got: Any) -> bool:
            # Called per line: events are taken (and timed) as they arrive.
            nonlocal taken
            r.take(got.events[taken:])
            taken = len(got.events)
            return r.count() >= expected

        got = await read_stream(http, url, r.client.headers(), kind, arrived, deadline=20)
        if got.status != 200:
            raise RuntimeError(got.status)

    return read


async def _websocket(r: Receiver, http: aiohttp.ClientSession, expected: int) -> None:
    url = r.base.replace("http", "ws") + f"/api/events/ws?cursor={r.cursor}"
    async with http.ws_connect(
        url, headers={**r.client.headers(), "Origin": r.base}, heartbeat=None
    ) as ws:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            r.take([json.loads(msg.data)])
            if r.count() >= expected:
                return


async def _jsonp(r: Receiver, http: aiohttp.ClientSession, expected: int) -> None:
    url = r.base + f"/api/events/jsonp?callback=cb&cursor={r.cursor}&timeout=5"
    async with http.get(
        url, params={"token": r.client.token or ""}, timeout=aiohttp.ClientTimeout(total=15)
    ) as resp:
        body = await resp.read()
    if resp.status != 200 or not body.startswith(b"/**/cb("):
        raise RuntimeError(resp.status)
    r.take(json.loads(body[len(b"/**/cb(") : -2])["events"])


READERS: dict[str, Any] = {
    "longpoll": _longpoll,
    "sse": _stream("sse", "/api/events/stream"),
    "websocket": _websocket,
    "xhr": _stream("xhr", "/api/events/xhr"),
    "jsonp": _jsonp,
    "multipart": _stream("multipart", "/api/events/multipart"),
    "iframe": _stream("iframe", "/api/events/iframe"),
}


async def _send_all(
    sender: Client,
    receivers: list[Receiver],
    cfg: ChaosConfig,
    sent_at: dict[str, float],
    report: ChaosReport,
) -> None:
    """Each message to each of this sender's receivers, retried until it is stored."""
    for i in range(cfg.messages):
        for r in receivers:
            body = f"{r.client.user_id}:{i}"
            sent_at[body] = time.monotonic()
            for attempt in range(400):
                try:
                    resp = await sender.send(r.client, body, client_id=f"c-{body}")
                    if resp.status in (200, 201):
                        break
                except Exception:
                    pass
                report.send_retries += 1
                await asyncio.sleep(min(0.5, 0.05 * (attempt + 1)))
            else:
                raise RuntimeError(f"send {body} never succeeded")
            await asyncio.sleep(cfg.send_gap)


async def _faults(
    cluster: Cluster,
    redis: RedisServer,
    db_proxy: FaultyProxy | None,
    cfg: ChaosConfig,
    report: ChaosReport,
    done: asyncio.Event,
) -> None:
    """Inject the FAULTS one after another (the sends are paced to span them)."""
    for step in FAULTS:
        if done.is_set():
            return
        await asyncio.sleep(cfg.fault_gap)
        if step == "kill-gateway":
            victim = random.choice(cluster.gateways)
            victim.kill(signal.SIGKILL)
            report.fault(f"SIGKILL {victim.name}")
            await asyncio.sleep(0.5)
            await cluster.restart(victim)
        elif step == "restart-redis":
            redis.proc.kill(signal.SIGKILL)
            report.fault("Redis killed and restarted empty")
            await asyncio.sleep(cfg.outage)
            await redis.start()
        elif step == "database-outage" and db_proxy is not None:
            db_proxy.refuse = True
            db_proxy.cut()
            report.fault(f"database unreachable for {cfg.outage:g} s")
            await asyncio.sleep(cfg.outage)
            db_proxy.refuse = False


async def _watch_chatcore(cluster: Cluster, report: ChaosReport, done: asyncio.Event) -> None:
    """chatcore dies by the fault hook between a commit and its publish: restart it
    (without the hook), as a supervisor would; the outbox must deliver what it left."""
    proc = cluster.chatcore
    while not done.is_set():
        if proc.popen is not None and proc.popen.poll() is not None:
            report.fault(f"chatcore died after a commit (exit {proc.popen.returncode})")
            proc.env.pop("LONGTAIL_FAULT_EXIT_AFTER_COMMITS", None)
            await cluster.restart(proc)
        await asyncio.sleep(0.1)


async def run_chaos(cfg: ChaosConfig, workdir: Path) -> ChaosReport:
    report = ChaosReport()
    started = time.monotonic()
    redis = RedisServer(workdir)
    await redis.start()
    db_proxy: FaultyProxy | None = None
    if cfg.database_url:
        from urllib.parse import urlsplit

        parts = urlsplit(cfg.database_url)
        db_proxy = await FaultyProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
        database_url = cfg.database_url.replace(
            parts.netloc.split("@")[-1], f"127.0.0.1:{db_proxy.port}"
        )
    else:
        database_url = f"sqlite:///{workdir / 'chaos.sqlite3'}"
    env = base_env(redis.url, database_url, f"chaos{uuid.uuid4().hex[:6]}")
    # chatcore dies after a third of the run's commits; its outbox must cover for it.
    env["LONGTAIL_FAULT_EXIT_AFTER_COMMITS"] = str(cfg.receivers * (2 + cfg.messages // 3))
    env.update(LOAD_TEST_LIMITS)
    env["LONGTAIL_DRAIN_SECONDS"] = "2"
    # Async: the database proxy runs on this event loop and must keep serving meanwhile.
    migrate = await asyncio.create_subprocess_exec(
        "longtail", "migrate", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(migrate.communicate(), 120)
    if migrate.returncode:
        raise RuntimeError(output.decode(errors="replace"))
    cluster = Cluster.build(workdir, env, gateways=3)
    nginx: Nginx | None = None
    done = asyncio.Event()
    try:
        await cluster.start()
        nginx = Nginx(workdir, cluster.urls, free_port())
        nginx.start()
        await nginx.wait_ready(cluster)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            report = await _traffic(http, nginx.url, cluster, redis, db_proxy, cfg, report, done)
    finally:
        done.set()
        if nginx is not None:
            nginx.stop()
        cluster.stop()
        redis.proc.stop()
        if db_proxy is not None:
            await db_proxy.stop()
    report.seconds = time.monotonic() - started
    return report


async def _traffic(
    http: aiohttp.ClientSession,
    url: str,
    cluster: Cluster,
    redis: RedisServer,
    db_proxy: FaultyProxy | None,
    cfg: ChaosConfig,
    report: ChaosReport,
    done: asyncio.Event,
) -> ChaosReport:
    tag = uuid.uuid4().hex[:5]
    senders = [await Client(http, url).signup(f"s{i}{tag}") for i in range(SENDERS)]
    receivers: list[Receiver] = []
    for i in range(cfg.receivers):
        client = await Client(http, url).signup(f"r{i}{tag}")
        await senders[i % len(senders)].befriend(client)
        client.cursor = (await client.request("GET", "/api/events")).body["cursor"]
        receivers.append(Receiver(client, TRANSPORTS[i % len(TRANSPORTS)], url))
    sent_at: dict[str, float] = {}
    # Spread the sends over the whole fault schedule, so every fault meets traffic.
    schedule = len(FAULTS) * (cfg.fault_gap + cfg.outage)
    sends_each = cfg.messages * -(-cfg.receivers // SENDERS)
    cfg.send_gap = max(cfg.send_gap, schedule / sends_each)
    stop = asyncio.Event()
    reading = [asyncio.create_task(r.run(http, cfg.messages, stop)) for r in receivers]
    chaos = asyncio.create_task(_faults(cluster, redis, db_proxy, cfg, report, done))
    watcher = asyncio.create_task(_watch_chatcore(cluster, report, done))
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *[
                    _send_all(
                        s,
                        [r for j, r in enumerate(receivers) if j % len(senders) == k],
                        cfg,
                        sent_at,
                        report,
                    )
                    for k, s in enumerate(senders)
                ]
            ),
            cfg.deadline,
        )
        done.set()
        await chaos
        await asyncio.wait(reading, timeout=cfg.deadline / 2)
    finally:
        done.set()
        stop.set()
        for task in [*reading, chaos, watcher]:
            task.cancel()
        await asyncio.gather(*reading, chaos, watcher, return_exceptions=True)
    report.messages = cfg.messages * cfg.receivers
    for r in receivers:
        audit(r, [f"{r.client.user_id}:{i}" for i in range(cfg.messages)], report)
        for body, arrived in r.arrived.items():
            delay = arrived - sent_at.get(body, arrived)
            if delay > report.max_delay:
                sent = sent_at.get(body, arrived) - report.t0
                report.max_delay = delay
                report.slowest = f"{body} over {r.transport}, sent at +{sent:.1f} s"
    return report


def audit(r: Receiver, expected: list[str], report: ChaosReport) -> None:
    """Every expected message once, in the order it was sent (seqs strictly rising)."""
    bodies = [e["message"]["body"] for e in r.got if e["type"] == "message"]
    seqs = [e["seq"] for e in r.got]
    report.delivered += len(set(bodies) & set(expected))
    report.lost += len(set(expected) - set(bodies))
    report.duplicated += len(bodies) - len(set(bodies))
    report.out_of_order += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    if sorted(bodies, key=expected.index) != bodies:
        report.out_of_order += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--receivers", type=int, default=210, help="clients (30 per transport)")
    parser.add_argument("--messages", type=int, default=15, help="per receiver")
    parser.add_argument("--fault-gap", type=float, default=3.0)
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL to use (its public schema is used as is); 'sqlite' for a SQLite file",
    )
    args = parser.parse_args(argv)
    cfg = ChaosConfig(
        receivers=args.receivers,
        messages=args.messages,
        fault_gap=args.fault_gap,
        deadline=600,
        database_url=None if args.database_url == "sqlite" else args.database_url,
    )
    with tempfile.TemporaryDirectory(prefix="longtail-chaos-") as tmp:
        report = asyncio.run(run_chaos(cfg, Path(tmp)))
    print(report.summary())
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
