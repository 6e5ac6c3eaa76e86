"""Longtail side by side with python-socketio, same machine, same load, one run.

    python -m bench.compare [--held-max 15000] [--rate 1000] [--duration 10] ...

Starts Longtail (a throw-away database, chatcore and two gateways, Redis under a random
key prefix) and python-socketio (two bench/socketio_server.py processes on
AsyncRedisManager, on the same Redis), and drives both from this process:

1. held: RSS per idle connection on one server process started for that transport,
   in steps up to --held-max (Longtail long-poll, SSE, WebSocket; socket.io polling and
   websocket);
2. latency: send start -> receipt at --rate msg/s over --pairs pairs, sender and
   receiver on different server processes;
3. throughput: --senders closed-loop senders, delivered events/s and the servers' CPU
   per delivered event;
4. fan-out: one message at a time to a --fanout-members room, until all got it.

Prints a table, writes JSON (--output) and a chart (--chart), tears everything down.
Exit 0: all measured, nothing lost, duplicated or out of order; 1: something was; 2: it
could not measure.
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

from redis.asyncio import Redis

from bench import compare_report, longtail_side, socketio_side
from bench.api import User, befriend, bounded_gather, create_users, current_cursor
from bench.cluster import BenchError, raise_open_files
from bench.held import OPEN_BATCH, HeldResult, held_steps, hold_steps
from bench.load import WARMUP, MemberAudit, TimedAudit, drive, fan_out
from bench.longtail_side import HELD_STOP_GRACE
from bench.run import Laps, make_pairs
from bench.socketio_side import SocketioHolder, SocketioServers
from longtail.wire import Keys

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHART = ROOT / "docs" / "benchmarks-compare.png"
SETUP_CONCURRENCY = 32
# socket.io user ids: any integers will do (the server trusts the signed token); kept
# apart per role so a stray event shows up as foreign.
SIO_HELD, SIO_SENDER, SIO_RECEIVER, SIO_FANOUT = 1_000_000, 2_000_000, 3_000_000, 4_000_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--held-max", type=int, default=15_000, help="most connections held (15000)")
    add("--held-conns-per-user", type=int, default=3, help="held connections per user (3)")
    add("--open-batch", type=int, default=OPEN_BATCH, help="held connections opened at once")
    add("--skip-held", action="store_true", help="leave out the held-connection phase")
    add("--rate", type=float, default=1000.0, help="latency phase: msg/s in total (1000)")
    add("--duration", type=float, default=10.0, help="seconds of sending per run (10)")
    add("--pairs", type=int, default=50, help="latency phase: sender/receiver pairs (50)")
    add(
        "--warmup",
        type=int,
        default=WARMUP,
        help=f"latency phase: each pair's first messages left out of the figures ({WARMUP})",
    )
    add("--senders", type=int, default=32, help="throughput phase: closed-loop senders (32)")
    add("--fanout-members", type=int, default=100, help="members of the fan-out room (100)")
    add("--fanout-repeats", type=int, default=20, help="fan-out messages, one at a time (20)")
    add("--redis-url", default="redis://127.0.0.1:6379/0")
    add(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server to create the run's own database on, or sqlite (a "
        "temporary file)",
    )
    add("--output", type=Path, default=RESULTS / "compare.json")
    add("--chart", type=Path, default=CHART)
    add("--log-dir", type=Path, default=RESULTS / "logs" / "compare")
    args = parser.parse_args(argv)
    counts = (args.held_max, args.held_conns_per_user, args.open_batch, args.pairs)
    if min(*counts, args.senders, args.fanout_repeats) < 1:
        parser.error("counts must be >= 1")
    if not 2 <= args.fanout_members <= 100:
        parser.error("--fanout-members must be within [2, 100] (Longtail's room limit)")
    if args.rate <= 0 or not 0 < args.duration <= 120:
        parser.error("--rate must be positive and --duration within (0, 120]")
    return args


STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"compare: {time.monotonic() - STARTED:6.1f}s {message}", file=sys.stderr, flush=True)


# --- Longtail --------------------------------------------------------------------------


async def run_longtail(cluster: longtail_side.CompareCluster, args: argparse.Namespace) -> dict:
    gw1, gw2 = cluster.gateways
    servers = [gw1, gw2, cluster.chatcore]
    redis = Redis.from_url(args.redis_url)
    keys = Keys(cluster.prefix)
    out: dict[str, Any] = {"held": {}, "latency": {}, "throughput": {}, "fanout": {}}
    try:
        async with longtail_side.client_session() as http:
            count = max(args.pairs, args.senders)
            log(
                f"longtail: registering {count} sender/receiver pairs and "
                f"{args.fanout_members} room members"
            )
            pairs = await make_pairs(http, gw2.url, count)
            fans = await create_users(http, gw2.url, "fan", args.fanout_members, SETUP_CONCURRENCY)
            creator, others = fans[0], fans[1:]
            # One at a time, as since the bench was written, when concurrent friend
            # requests from one user deadlocked in chatcore (fixed in f2203d7): the
            # setup is not measured, and runs stay alike.
            for member in others:
                await befriend(http, gw2.url, creator, member)
            room_id = await longtail_side.make_room(http, gw2.url, creator, others)
            held_users: list[User] = []
            cursors: list[int] = []
            if not args.skip_held:
                n = -(-args.held_max // args.held_conns_per_user)
                log(f"longtail: registering {n} users for the held connections")
                held_users = await create_users(http, gw2.url, "held", n, SETUP_CONCURRENCY)
                cursors = await bounded_gather(
                    [partial(current_cursor, http, gw2.url, u) for u in held_users],
                    SETUP_CONCURRENCY,
                )
        for transport in longtail_side.TRANSPORTS if not args.skip_held else ():
            log(f"longtail: holding up to {args.held_max} {transport} connections")
            out["held"][transport] = await longtail_side.measure_held(
                cluster,
                transport,
                held_users,
                cursors,
                max_held=args.held_max,
                conns_per_user=args.held_conns_per_user,
                open_batch=args.open_batch,
                redis=redis,
            )
        for transport in longtail_side.TRANSPORTS:
            for phase, n, rate in (
                ("latency", args.pairs, args.rate),
                ("throughput", args.senders, None),
            ):
                log(f"longtail: {phase} over {transport}")
                audit = TimedAudit(n, warmup=args.warmup if rate else 0)
                receivers = [p.receiver for p in pairs[:n]]
                async with (
                    longtail_side.listening(
                        transport, gw2, receivers, [audit] * n, redis, keys
                    ) as tasks,
                    longtail_side.client_session() as http,
                    longtail_side.message_poster(
                        transport, http, gw1, [p.sender for p in pairs[:n]]
                    ) as posts,
                ):
                    send = longtail_side.direct_sender(posts, pairs[:n])
                    out[phase][transport] = await drive(
                        send, n, audit, tasks, servers, duration=args.duration, rate=rate
                    )
            log(f"longtail: fan-out over {transport}")
            audit = TimedAudit(len(fans))
            async with (
                longtail_side.listening(
                    transport,
                    gw2,
                    fans,
                    [MemberAudit(audit, i) for i in range(len(fans))],
                    redis,
                    keys,
                ) as tasks,
                longtail_side.client_session() as http,
                longtail_side.message_poster(transport, http, gw1, [creator]) as (post,),
            ):
                send_room = longtail_side.room_sender(post, room_id)
                result = await fan_out(send_room, audit, args.fanout_repeats, tasks)
            out["fanout"][transport] = result.as_json()
    finally:
        await redis.aclose()
    return out


# --- python-socketio -------------------------------------------------------------------


async def held_socketio(
    servers: SocketioServers, transport: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Like Longtail's: a server process of its own, warmed up, then held in steps."""
    name = f"held-sio-{transport}"
    server = await servers.start_one(name)
    result = HeldResult(args.held_conns_per_user, 0)
    users = list(range(SIO_HELD, SIO_HELD + -(-args.held_max // args.held_conns_per_user)))
    try:
        warm = SocketioHolder(servers, server, transport, users, 1, args.open_batch)
        await warm.grow_to(min(200, len(users)))
        await warm.release()
        holder = SocketioHolder(
            servers, server, transport, users, args.held_conns_per_user, args.open_batch
        )
        result.idle_rss_kib = server.rss_kib()
        result.steps = await hold_steps(holder, held_steps(args.held_max), result.errors)  # type: ignore[arg-type]
        result.returned_early = holder.returned_early
        result.rss_after_release_kib = server.rss_kib()
    finally:
        stop_started = time.monotonic()
        await servers.stop_one(server, HELD_STOP_GRACE)
        stop_seconds = round(time.monotonic() - stop_started, 1)
    held = result.as_json()
    held["stop_seconds"] = stop_seconds
    held["server"] = name
    held["exit_code"] = server.process.returncode
    del held["rehold"], held["poll_timeout_s"]
    return held


async def run_socketio(servers: SocketioServers, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"held": {}, "latency": {}, "throughput": {}, "fanout": {}}
    sio1, sio2 = servers.services[:2]
    both = [sio1, sio2]
    for transport in socketio_side.TRANSPORTS if not args.skip_held else ():
        log(f"socketio: holding up to {args.held_max} {transport} connections")
        out["held"][transport] = await held_socketio(servers, transport, args)
    for transport in socketio_side.TRANSPORTS:
        for phase, n, rate in (
            ("latency", args.pairs, args.rate),
            ("throughput", args.senders, None),
        ):
            log(f"socketio: {phase} over {transport}")
            audit = TimedAudit(n, warmup=args.warmup if rate else 0)
            receiver_ids = [SIO_RECEIVER + i for i in range(n)]
            handlers = [socketio_side.recorder(audit)] * n
            async with (
                socketio_side.listening(
                    servers, sio2, transport, receiver_ids, handlers, audit
                ) as tasks,
                socketio_side.senders(
                    servers, sio1, transport, [SIO_SENDER + i for i in range(n)]
                ) as clients,
            ):
                send = socketio_side.direct_sender(clients, receiver_ids)
                out[phase][transport] = await drive(
                    send, n, audit, tasks, both, duration=args.duration, rate=rate
                )
        log(f"socketio: fan-out over {transport}")
        members = args.fanout_members
        audit = TimedAudit(members)
        member_ids = [SIO_FANOUT + i for i in range(members)]
        handlers = [socketio_side.recorder(audit, i) for i in range(members)]
        async with (
            socketio_side.listening(
                servers, sio2, transport, member_ids, handlers, audit, room="fan-out"
            ) as tasks,
            socketio_side.senders(servers, sio1, transport, member_ids[:1]) as (client,),
        ):
            send_room = socketio_side.room_sender(client, "fan-out")
            result = await fan_out(send_room, audit, args.fanout_repeats, tasks)
        out["fanout"][transport] = result.as_json()
    return out


# --- the run ---------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.compare", *sys.argv[1:]]),
        "revision": compare_report.revision(),
        "load_average_before": compare_report.load_average(),
        "machine": await compare_report.describe(args.redis_url, args.database_url),
        "config": {
            "held_max": None if args.skip_held else args.held_max,
            "held_conns_per_user": args.held_conns_per_user,
            "open_batch": args.open_batch,
            "rate_per_s": args.rate,
            "duration_s": args.duration,
            "pairs": args.pairs,
            "senders": args.senders,
            "fanout_members": args.fanout_members,
            "fanout_repeats": args.fanout_repeats,
            "database": args.database_url.split(":", 1)[0].split("+", 1)[0],
        },
    }
    laps = Laps(started)
    results["phase_seconds"] = laps.seconds
    args.log_dir.mkdir(parents=True, exist_ok=True)
    log("starting Longtail (database, chatcore, two gateways) and two socket.io servers")
    async with (
        longtail_side.running_longtail(args.log_dir, args.redis_url, args.database_url) as lt,
        socketio_side.running_socketio(args.log_dir, args.redis_url) as sio,
    ):
        laps.lap("start")
        results["longtail"] = await run_longtail(lt, args)
        laps.lap("longtail")
        results["socketio"] = await run_socketio(sio, args)
        laps.lap("socketio")
    laps.lap("stop")
    results["unclean_exits"] = lt.unclean_exits()
    results["log_problems"] = lt.log_problems()
    results["socketio_unclean_exits"] = sio.unclean_exits()
    results["socketio_log_problems"] = sio.log_problems()
    results["ratios"] = compare_report.ratios(results)
    results["load_average_after"] = compare_report.load_average()
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files()
    try:
        results = asyncio.run(bench(args))
    except BenchError as exc:
        log(f"could not measure: {exc}\n(process logs: {args.log_dir})")
        return 2
    results["failures"] = compare_report.failures(results)
    results["socketio_findings"] = compare_report.socketio_findings(results)
    results["unmeasured"] = compare_report.unmeasured(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    compare_report.chart(results, args.chart)
    print(compare_report.table(results))
    print(f"\nresults: {args.output}\nchart: {args.chart}")
    for failure in results["failures"]:
        print(f"FAILED: {failure}")
    for finding in results["socketio_findings"]:
        print(f"NOTE (python-socketio, does not fail the run): {finding}")
    for missing in results["unmeasured"]:
        print(f"NOT MEASURED: {missing}")
    if results["unmeasured"]:
        return 2
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
