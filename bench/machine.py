"""What the figures were measured on: they mean little without the machine next to them."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from bench.cluster import PG_ADMIN_DSN, REDIS_URL


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def load_average() -> list[float]:
    """1, 5 and 15 minute load: other work on the box skews every figure here."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


async def redis_version() -> str:
    redis = Redis.from_url(REDIS_URL)
    try:
        return str((await redis.info("server"))["redis_version"])
    finally:
        await redis.aclose()


async def postgres_version() -> str:
    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


# Enough commits for a steady median, few enough to take well under a second.
COMMIT_PROBES = 200


async def commit_floor_ms(connection: asyncpg.Connection) -> float:
    """p50 ms of the cheapest durable transaction: BEGIN, take a transaction id, COMMIT.

    Taking an id makes the COMMIT write and flush a WAL record, as a send's does, so this
    is the floor under any send's commit on this machine: three round trips to the
    server and its fsync, one client, nothing else of ours in the way.
    """
    times: list[float] = []
    for _ in range(COMMIT_PROBES):
        started = time.perf_counter()
        async with connection.transaction():
            await connection.fetchval("SELECT txid_current()")
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def revision() -> str:
    """The commit measured, marked '+dirty' when the work tree has changes on top."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


async def describe() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_mib": memory_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": await redis_version(),
        "postgresql": await postgres_version(),
        "tornado": version("tornado"),
        "aiohttp_client": version("aiohttp"),
    }
