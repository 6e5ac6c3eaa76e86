"""Longtail's first benchmark: held long-polls per MiB, and cross-gateway latency.

    python -m bench.run [--max-held 5000] [--rate 200] [--duration 10] ...

Starts a throw-away deployment (PostgreSQL database `longtail_bench`, chatcore and two
gateways on free loopback ports, real Redis under a random key prefix), measures, prints
a table, writes bench/results/latest.json and tears everything down. This process is
the load generator; the gateways are measured from /proc. Exit code 0 only if every
message arrived exactly once and in order and every step was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench import machine
from bench.api import User, befriend, bounded_gather, connector, create_users, current_cursor
from bench.cluster import REDIS_URL, BenchError, Cluster, raise_open_files, running_cluster
from bench.held import OPEN_BATCH, HeldResult, connection_states, measure_held, wait_for
from bench.latency import (
    LatencyRun,
    Pair,
    Receiver,
    measure_latency,
    receive_longpoll,
    receive_websocket,
)
from bench.report import table
from longtail.wire import Keys

RESULTS = Path(__file__).resolve().parent / "results"
# Held long-polls ask for HELD_POLL_TIMEOUT; the gateways must allow it.
POLL_TIMEOUT_MAX = 120.0
HELD_POLL_TIMEOUT = 110.0
SETUP_CONCURRENCY = 32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--max-held",
        type=int,
        default=5000,
        help="most long-polls held on gateway 1 (steps 1000, 2000, 5000...)",
    )
    parser.add_argument(
        "--conns-per-user",
        type=int,
        default=1,
        help="held long-polls per user (default 1: one user each)",
    )
    parser.add_argument(
        "--open-batch",
        type=int,
        default=OPEN_BATCH,
        help=f"held long-polls opened at once (default {OPEN_BATCH})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="messages per second, all pairs together (default 200)",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of sending per transport (default 10)"
    )
    parser.add_argument("--pairs", type=int, default=50, help="sender/receiver pairs (50)")
    parser.add_argument(
        "--no-websocket", action="store_true", help="measure latency on long-poll only"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    if min(args.max_held, args.conns_per_user, args.open_batch, args.pairs) < 1:
        parser.error("--max-held, --conns-per-user, --open-batch and --pairs must be >= 1")
    if args.rate <= 0 or not 0 < args.duration <= 60:
        parser.error("--rate must be positive and --duration within (0, 60]")
    return args


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def make_pairs(http: aiohttp.ClientSession, base: str, count: int) -> list[Pair]:
    senders = await create_users(http, base, "sender", count, SETUP_CONCURRENCY)
    receivers = await create_users(http, base, "receiver", count, SETUP_CONCURRENCY)
    await bounded_gather(
        [partial(befriend, http, base, s, r) for s, r in zip(senders, receivers, strict=True)],
        SETUP_CONCURRENCY,
    )
    return [Pair(i, s, r) for i, (s, r) in enumerate(zip(senders, receivers, strict=True))]


async def cursors_via(base: str, users: list[User]) -> list[int]:
    """The users' current cursors, on a session of its own that is closed afterwards."""
    async with aiohttp.ClientSession(connector=connector()) as http:
        return await bounded_gather(
            [partial(current_cursor, http, base, u) for u in users], SETUP_CONCURRENCY
        )


async def run_held(
    cluster: Cluster, args: argparse.Namespace, redis: Redis, keys: Keys
) -> HeldResult:
    gateway, other = cluster.gateways
    user_count = -(-args.max_held // args.conns_per_user)
    log(f"registering {user_count} users for the held long-polls")
    async with aiohttp.ClientSession(connector=connector()) as http:
        users = await create_users(http, other.url, "held", user_count, SETUP_CONCURRENCY)
    # Asking gateway 1 for the cursors warms it up the way real clients would (auth,
    # catch-up, chatcore client) before its idle RSS is read.
    cursors = await cursors_via(gateway.url, users)

    async def no_connections() -> bool:
        return not connection_states(gateway)

    await wait_for("gateway 1 to close the warm-up connections", no_connections, 10)
    log(f"holding up to {args.max_held} long-polls on {gateway.name}")
    return await measure_held(
        gateway,
        users,
        cursors,
        max_held=args.max_held,
        conns_per_user=args.conns_per_user,
        poll_timeout=HELD_POLL_TIMEOUT,
        redis=redis,
        keys=keys,
        open_batch=args.open_batch,
    )


async def run_latency(
    cluster: Cluster, args: argparse.Namespace, redis: Redis, keys: Keys
) -> list[LatencyRun]:
    sender_gw, receiver_gw = cluster.gateways
    async with aiohttp.ClientSession(connector=connector()) as http:
        log(f"registering and befriending {args.pairs} sender/receiver pairs")
        pairs = await make_pairs(http, receiver_gw.url, args.pairs)
    transports: list[tuple[str, Receiver]] = [("long-poll", receive_longpoll)]
    if not args.no_websocket:
        transports.append(("websocket", receive_websocket))
    runs = []
    for name, receiver in transports:
        log(f"latency over {name}: {args.rate:g} msg/s for {args.duration:g}s")
        runs.append(
            await measure_latency(
                name,
                receiver,
                sender_gw,
                receiver_gw,
                cluster.chatcore,
                pairs,
                rate=args.rate,
                duration=args.duration,
                redis=redis,
                keys=keys,
            )
        )
    return runs


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "revision": machine.revision(),
        "load_average_before": machine.load_average(),
        "machine": await machine.describe(),
        "config": {
            "max_held": args.max_held,
            "conns_per_user": args.conns_per_user,
            "open_batch": args.open_batch,
            "rate_per_s": args.rate,
            "duration_s": args.duration,
            "pairs": args.pairs,
        },
    }
    laps = Laps(started)
    results["phase_seconds"] = laps.seconds
    log("starting PostgreSQL database, chatcore and two gateways")
    async with running_cluster(RESULTS / "logs", POLL_TIMEOUT_MAX) as cluster:
        redis = Redis.from_url(REDIS_URL)
        keys = Keys(cluster.prefix)
        laps.lap("start")
        try:
            results["held"] = (await run_held(cluster, args, redis, keys)).as_json()
            laps.lap("held")
            runs = await run_latency(cluster, args, redis, keys)
            results["latency"] = [vars(run) for run in runs]
            laps.lap("latency")
        finally:
            await redis.aclose()
    results["unclean_exits"] = cluster.unclean_exits()
    results["log_problems"] = cluster.log_problems()
    laps.lap("stop")
    results["load_average_after"] = machine.load_average()
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


class Laps:
    """Seconds spent in each phase, so a slow run shows where the time went."""

    def __init__(self, started: float) -> None:
        self.mark = started
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self.mark, 1)
        self.mark = now


def failures(results: dict[str, Any]) -> list[str]:
    """Why this run does not count (empty: it does)."""
    found: list[str] = [*results["held"]["errors"], *results["unclean_exits"]]
    for name, problems in results["log_problems"].items():
        found += [
            f"{name} logged {p['count']}x: {p['line']}"
            for p in problems
            if not p["line"].startswith("WARNING")
        ]
    if results["held"]["returned_early"]:
        found.append(f"{results['held']['returned_early']} held long-polls returned early")
    for run in results["latency"]:
        if run["failures"]:
            found.append(f"{run['transport']}: {run['failures']} delivery failure(s)")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files()
    try:
        results = asyncio.run(bench(args))
    except BenchError as exc:
        log(f"failed: {exc}\n(process logs: {RESULTS / 'logs'})")
        return 2
    results["failures"] = failures(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nresults: {args.output}")
    for failure in results["failures"]:
        print(f"FAILED: {failure}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
