"""A real deployment in miniature: PostgreSQL, chatcore and two gateways as processes.

The figures only mean something if the gateway under test is a separate process that
talks to real Redis and PostgreSQL exactly as in production, so nothing here runs
in-process: each service is `python -m longtail.cli ...` with its own environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from redis.asyncio import Redis

from longtail.settings import LOAD_TEST_LIMITS

HOST = "127.0.0.1"
REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "longtail_bench"
OPEN_FILES = 20_000
READY_DEADLINE = 30.0
STOP_GRACE = 10.0
MIGRATE_DEADLINE = 60.0
# Longtail logs one JSON object per line, or (LONGTAIL_LOG_FORMAT=text, and before
# JSON logs existed) "2026-01-01 12:00:00,123 WARNING logger: message".
PROBLEM_LEVELS = ("WARNING", "ERROR", "CRITICAL")
LOG_PROBLEM = re.compile(r"^\S+ \S+ ((?:WARNING|ERROR|CRITICAL) .*)")
# Our own readiness polling, answered 503 until the service is ready.
PROBE_ACCESS = re.compile(r"tornado\.access: 503 GET /(readyz|internal/health)")


class BenchError(RuntimeError):
    """The bench could not measure what it set out to measure."""


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it for a port-0 bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def raise_open_files() -> None:
    """Allow up to OPEN_FILES descriptors: each held connection costs one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def process_cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU time a process has consumed so far, optionally with that of
    its children that have exited and been waited for (cutime, cstime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds_by_command(commands: tuple[str, ...]) -> dict[str, float]:
    """CPU time of every process with one of these names (e.g. all PostgreSQL
    processes), summed per name: the shared servers' part of the cost. A backend that
    exits is counted through its parent's reaped-children time, so the sum only grows."""
    totals = dict.fromkeys(commands, 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            name = Path(f"/proc/{entry}/comm").read_text().strip()
            if name in totals:
                totals[name] += process_cpu_seconds(int(entry), reaped_children=True)
        except (OSError, ValueError):
            continue  # exited while we looked
    return totals


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot (user, nice, system, irq, softirq,
    steal from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def log_problem(line: str) -> str | None:
    """'LEVEL logger: message' for a warning or worse, from a JSON or a text log line."""
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        if entry.get("level") not in PROBLEM_LEVELS:
            return None
        traceback = " (with a traceback)" if entry.get("exc") else ""
        return f"{entry['level']} {entry.get('logger')}: {entry.get('msg')}{traceback}"
    match = LOG_PROBLEM.match(line)
    if match:
        return match.group(1)
    return "Traceback (see the log)" if line.startswith("Traceback") else None


@dataclass
class Service:
    """One child process and where it listens."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident set size as the kernel reports it (VmRSS, in KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError(f"{self.name}: no VmRSS in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def log_problems(self, top: int = 5) -> list[dict[str, Any]]:
        """The most frequent WARNING/ERROR lines (timestamp dropped), with their counts."""
        counts: Counter[str] = Counter()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        for line in text.splitlines():
            problem = log_problem(line)
            if problem is not None and not PROBE_ACCESS.search(problem):
                counts[problem[:200]] += 1
        return [{"count": n, "line": line} for line, n in counts.most_common(top)]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Cluster:
    """Chatcore plus two gateways sharing one Redis prefix and one database.

    `redis_url` is any REDIS_URL form (a Cluster, a Sentinel setup); by default the
    machine's Redis, as before.
    """

    log_dir: Path
    poll_timeout_max: float
    prefix: str = field(default_factory=lambda: f"bench{secrets.token_hex(4)}")
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    services: list[Service] = field(default_factory=list)
    redis_url: str = REDIS_URL

    @property
    def chatcore(self) -> Service:
        return self.services[0]

    @property
    def gateways(self) -> list[Service]:
        return self.services[1:]

    def env(self, port: int, chatcore_port: int) -> dict[str, str]:
        return {
            **os.environ,
            "HOST": HOST,
            "PORT": str(port),
            "CHATCORE_HOST": HOST,
            "CHATCORE_URL": f"http://{HOST}:{chatcore_port}",
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": f"postgresql://postgres@{HOST}:5432/{DB_NAME}",
            "LONGTAIL_SECRET": self.secret,
            "LONGTAIL_REDIS_PREFIX": self.prefix,
            # Bench users need no real password hardening; registration must be quick.
            "LONGTAIL_ARGON2_MEMORY_KIB": "64",
            "LONGTAIL_ARGON2_TIME_COST": "1",
            "LONGTAIL_POLL_TIMEOUT": "25",
            "LONGTAIL_POLL_TIMEOUT_MAX": f"{self.poll_timeout_max:g}",
            "LONGTAIL_LOG_LEVEL": "WARNING",
            **LOAD_TEST_LIMITS,
        }

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "longtail.cli", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_open_files,
                start_new_session=True,
            )

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        core_port = free_port()
        await self.migrate(self.env(core_port, core_port))
        self.add("chatcore", core_port, ["chatcore", "--port", str(core_port)], core_port)
        await wait_ready(self.chatcore, "/internal/health")
        for name in ("gateway1", "gateway2"):
            port = free_port()
            self.add(name, port, ["gateway", "--port", str(port)], core_port)
        for gateway in self.gateways:
            await wait_ready(gateway, "/readyz")

    def add(self, name: str, port: int, args: list[str], core_port: int) -> None:
        process = self.spawn(name, args, self.env(port, core_port))
        self.services.append(Service(name, port, process, self.log_dir / f"{name}.log"))

    async def migrate(self, env: dict[str, str]) -> None:
        process = self.spawn("migrate", ["migrate"], env)
        try:
            code = await asyncio.wait_for(asyncio.to_thread(process.wait), MIGRATE_DEADLINE)
        except TimeoutError:
            process.kill()
            raise BenchError("`longtail migrate` did not finish in time") from None
        if code != 0:
            log = (self.log_dir / "migrate.log").read_text(errors="replace")
            raise BenchError(f"`longtail migrate` exited with {code}:\n{log}")

    async def stop(self) -> None:
        """SIGTERM everything, then SIGKILL whatever is still running after the grace."""
        for service in reversed(self.services):
            with suppress(ProcessLookupError):
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for service in reversed(self.services):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.to_thread(service.process.wait, remaining)
            except subprocess.TimeoutExpired:
                print(f"bench: {service.name} ignored SIGTERM; killing it", file=sys.stderr)
                service.process.kill()
                await asyncio.to_thread(service.process.wait, STOP_GRACE)

    def log_problems(self) -> dict[str, list[dict[str, Any]]]:
        return {s.name: problems for s in self.services if (problems := s.log_problems())}

    def unclean_exits(self) -> list[str]:
        """Services that did not stop with exit code 0 (a crash or a SIGKILL)."""
        return [
            f"{s.name} exited with {s.process.returncode}"
            for s in self.services
            if s.process.returncode != 0
        ]


async def wait_ready(service: Service, path: str) -> None:
    """Poll `path` until it answers 200, the process dies, or the deadline passes."""
    deadline = time.monotonic() + READY_DEADLINE
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise BenchError(
                    f"{service.name} exited with {service.process.returncode}:\n"
                    f"{service.log_tail()}"
                )
            with suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(
                    service.url + path, timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise BenchError(f"{service.name} not ready after {READY_DEADLINE:g}s:\n{service.log_tail()}")


async def recreate_database() -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await connection.close()


async def drop_database() -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    finally:
        await connection.close()


def admin_dsn(url: str) -> str:
    """asyncpg's spelling of a SQLAlchemy-style URL (postgresql+asyncpg:// -> postgresql://)."""
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


async def _admin(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@asynccontextmanager
async def throwaway_database(url: str, purpose: str) -> AsyncIterator[str]:
    """A database of the run's own: `sqlite`, a new SQLite file in a temporary
    directory; a PostgreSQL URL, a new database `longtail_<purpose>_<hex>` on that
    server, dropped at the end whatever happens."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"longtail-{purpose}-") as workdir:
            yield f"sqlite:///{workdir}/longtail.sqlite3"
        return
    if scheme not in ("postgresql", "postgres"):
        raise ValueError("the database URL must be sqlite or a postgresql:// URL")
    dsn = admin_dsn(url)
    name = f"longtail_{purpose}_{secrets.token_hex(4)}"
    await _admin(dsn, f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
    finally:
        await _admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def delete_redis_keys(prefix: str) -> int:
    """Remove the run's keys (sessions live 30 days otherwise); bounded by what exists."""
    redis = Redis.from_url(REDIS_URL)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await redis.delete(*batch)
                batch = []
        if batch:
            deleted += await redis.delete(*batch)
    finally:
        await redis.aclose()
    return deleted


@asynccontextmanager
async def running_cluster(log_dir: Path, poll_timeout_max: float) -> AsyncIterator[Cluster]:
    """A started cluster on a fresh database; everything is torn down on the way out."""
    await recreate_database()
    cluster = Cluster(log_dir, poll_timeout_max)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
        await drop_database()
        await delete_redis_keys(cluster.prefix)
