"""The capacity model's measurements: CPU per delivery in the gateways and in Redis.

    python -m bench.scaling [--gateways 1,2,3] [--redis single,cluster]
                            [--receivers 600] [--rate 2000] [--duration 10] [--repeats 3]

For each Redis topology (one throw-away redis-server on a free port; a throw-away
Cluster of 3 primaries with a replica each) it starts chatcore on a throw-away
database and registers --receivers users through the API. Then, for each gateway count,
it starts that many gateways, opens one WebSocket per user (spread evenly), and
publishes events straight into Redis exactly as chatcore's outbox does, at --rate
events/s for --duration seconds, --repeats times. Over each window it reads from /proc
the CPU seconds of every gateway and every redis-server (primaries and replicas apart)
and divides them by the events delivered. Every event must arrive once and in order.

On the Cluster it also publishes the same payloads with SPUBLISH and with classic
PUBLISH to channels nobody subscribes, and counts per node what the Cluster does with
each: bus messages, bytes written, CPU.

Prints a table and a capacity model, writes JSON (--output). Exit 0: all measured,
nothing lost, duplicated or out of order; 1: something was (or a process exited
uncleanly); 2: it could not measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from bench import scaling_report
from bench.api import User, connector, create_users, current_cursor
from bench.cluster import (
    BenchError,
    Service,
    machine_busy_seconds,
    raise_open_files,
    throwaway_database,
)
from bench.latency import Audit, receive_websocket
from bench.machine import cpu_model, load_average, memory_mib, revision
from bench.redis_servers import Topology, TopologyError
from bench.scaling_load import (
    Publisher,
    PublishResult,
    ScalingCluster,
    event_json,
)
from bench.scaling_redis import (
    KINDS,
    NodeSample,
    Owners,
    deltas,
    fanout_comparison,
    redis_version,
    roles,
    sample,
    start_redis,
    subscribed,
)
from longtail.redisconn import command_client
from longtail.wire import Event, Keys

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SETUP_CONCURRENCY = 32
OPEN_BATCH = 50  # WebSockets opened together (a gateway's Redis pool is 100 connections)
# A WebSocket refused at the handshake (a gateway's 500) is opened again, this often at
# most, and counted: on a Cluster, bursts of opens hit a redis-py client race (see
# docs/scaling.md); the bench measures deliveries, not that.
OPEN_RETRIES = 3
SUBSCRIBE_DEADLINE = 30.0
DRAIN_DEADLINE = 10.0  # after the last publish: time for the stragglers to arrive
LINGER = 0.5  # then keep listening, so a late duplicate is still counted
POLL_TIMEOUT_MAX = 60.0
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"scaling: {time.monotonic() - STARTED:6.1f}s {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--gateways", default="1,2,3", help="gateway counts to measure (1,2,3)")
    add("--redis", default="single,cluster", help="topologies: single, cluster (both)")
    add("--receivers", type=int, default=600, help="users, one WebSocket each (600)")
    add("--rate", type=float, default=2000.0, help="events published per second (2000)")
    add("--duration", type=float, default=10.0, help="seconds per measuring window (10)")
    add("--repeats", type=int, default=3, help="windows per configuration; medians (3)")
    add("--fanout-publishes", type=int, default=5000, help="Cluster PUBLISH/SPUBLISH each")
    add(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server to create the run's own database on, or sqlite",
    )
    add("--output", type=Path, default=RESULTS / "scaling.json")
    add("--log-dir", type=Path, default=RESULTS / "logs" / "scaling")
    scaling_report.add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.gateway_counts = sorted({int(n) for n in args.gateways.split(",") if n.strip()})
    except ValueError:
        parser.error("--gateways is a comma-separated list of counts, e.g. 1,2,3")
    args.kinds = [k.strip() for k in args.redis.split(",") if k.strip()]
    if not args.gateway_counts or min(args.gateway_counts) < 1 or max(args.gateway_counts) > 8:
        parser.error("gateway counts must be within [1, 8]")
    if not args.kinds or any(k not in KINDS for k in args.kinds):
        parser.error(f"--redis takes {', '.join(KINDS)}")
    if args.receivers < max(args.gateway_counts) or args.receivers > 15_000:
        parser.error("--receivers must be at least the gateway count and at most 15000")
    if not 0 < args.rate <= 50_000 or not 0 < args.duration <= 120 or args.repeats < 1:
        parser.error("--rate within (0, 50000], --duration within (0, 120], --repeats >= 1")
    if args.fanout_publishes < 1:
        parser.error("--fanout-publishes must be >= 1")
    return args


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def per_delivery_us(seconds: float, deliveries: int) -> float | None:
    return round(seconds * 1e6 / deliveries, 2) if deliveries else None


# --- one configuration ------------------------------------------------------------------


async def receive_retrying(
    http: aiohttp.ClientSession,
    gateway: Service,
    user: User,
    cursor: int,
    audit: Audit,
    listening: asyncio.Event,
    retries: list[str],
) -> None:
    """bench.latency.receive_websocket, opened again if the handshake is refused."""
    for attempt in range(OPEN_RETRIES + 1):
        try:
            await receive_websocket(http, gateway, user, cursor, audit, listening)
            return
        except aiohttp.WSServerHandshakeError as exc:
            if listening.is_set() or attempt == OPEN_RETRIES:
                raise
            retries.append(f"{gateway.name}: {exc.status}")
            await asyncio.sleep(0.2)


async def open_receivers(
    http: aiohttp.ClientSession,
    gateways: list[Service],
    users: list[User],
    cursors: list[int],
    audit: Audit,
    retries: list[str],
    tasks: list[asyncio.Task[None]],
) -> None:
    """One WebSocket per user, user i on gateway i mod N, opened in batches; the
    receivers go into `tasks` (the caller cancels them, whatever happens here)."""
    for start in range(0, len(users), OPEN_BATCH):
        listening = []
        for i in range(start, min(len(users), start + OPEN_BATCH)):
            event = asyncio.Event()
            gateway = gateways[i % len(gateways)]
            tasks.append(
                asyncio.create_task(
                    receive_retrying(http, gateway, users[i], cursors[i], audit, event, retries)
                )
            )
            listening.append(event)
        await wait_until("WebSockets to open", tasks, partial(all_set, listening))


def all_set(events: list[asyncio.Event]) -> bool:
    return all(e.is_set() for e in events)


async def wait_until(what: str, tasks: list[asyncio.Task[None]], condition: Any) -> None:
    deadline = time.monotonic() + SUBSCRIBE_DEADLINE
    while True:
        for task in tasks:
            if task.done():
                task.result()  # a receiver that died: raise its error
                raise BenchError(f"a receiver stopped while waiting for {what}")
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def drain(audit: Audit, tasks: list[asyncio.Task[None]]) -> None:
    deadline = time.monotonic() + DRAIN_DEADLINE
    while audit.received_count < audit.sent_count and time.monotonic() < deadline:
        if any(task.done() for task in tasks):
            return
        await asyncio.sleep(0.02)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure_window(
    publisher: Publisher,
    audit: Audit,
    tasks: list[asyncio.Task[None]],
    gateways: list[Service],
    topo: Topology,
    node_roles: dict[int, str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Publish for one window and drain; CPU and counters around it."""
    seen_before = [len(s) for s in audit.seen]
    gw_before = {g.name: g.cpu_seconds() for g in gateways}
    nodes_before = sample(topo)
    bench_before, machine_before = own_cpu(), machine_busy_seconds()
    started = time.monotonic()
    published = await publisher.run(args.rate, args.duration)
    await drain(audit, tasks)
    gw_cpu = {g.name: g.cpu_seconds() - gw_before[g.name] for g in gateways}
    nodes = deltas(nodes_before, sample(topo))
    bench_cpu, machine = own_cpu() - bench_before, machine_busy_seconds() - machine_before
    seconds = time.monotonic() - started
    got = [len(s) - before for s, before in zip(audit.seen, seen_before, strict=True)]
    delivered = sum(got)
    by_gateway = [sum(got[i :: len(gateways)]) for i in range(len(gateways))]
    return window_figures(
        published, delivered, seconds, gateways, by_gateway, gw_cpu, nodes, node_roles,
        bench_cpu, machine,
    )  # fmt: skip


def window_figures(
    published: PublishResult,
    delivered: int,
    seconds: float,
    gateways: list[Service],
    by_gateway: list[int],
    gw_cpu: dict[str, float],
    nodes: dict[int, NodeSample],
    node_roles: dict[int, str],
    bench_cpu: float,
    machine: float,
) -> dict[str, Any]:
    redis_nodes: dict[str, dict[str, Any]] = {}
    for port, d in sorted(nodes.items()):
        carried = published.per_owner.get(port, 0)
        redis_nodes[str(port)] = {
            "role": node_roles[port],
            "cpu_s": round(d.cpu, 3),
            "us_per_delivery": per_delivery_us(d.cpu, delivered),
            "events_carried": carried if node_roles[port] == "primary" else None,
            "us_per_event_carried": per_delivery_us(d.cpu, carried)
            if node_roles[port] == "primary"
            else None,
            "bytes_written_per_delivery": round(d.written / delivered, 1) if delivered else None,
            "net_output_bytes_per_delivery": round(d.net_output / delivered, 1)
            if delivered
            else None,
            "bus_messages_sent": sum(v for k, v in d.bus.items() if k.endswith("_sent")),
        }
    primaries = sum(d.cpu for p, d in nodes.items() if node_roles[p] == "primary")
    replicas = sum(d.cpu for p, d in nodes.items() if node_roles[p] == "replica")
    gw_total = sum(gw_cpu.values())
    redis_total = primaries + replicas
    return {
        "scheduled": published.scheduled,
        "published": published.published,
        "publish_seconds": round(published.seconds, 3),
        "achieved_rate_per_s": round(published.achieved_rate, 1),
        "pipelines": published.batches,
        "events_per_pipeline": round(published.published / max(1, published.batches), 1),
        "delivered": delivered,
        "window_seconds": round(seconds, 3),
        "gateways": {
            g.name: {
                "delivered": n,
                "cpu_s": round(gw_cpu[g.name], 3),
                "us_per_delivery": per_delivery_us(gw_cpu[g.name], n),
            }
            for g, n in zip(gateways, by_gateway, strict=True)
        },
        "gateways_us_per_delivery": per_delivery_us(gw_total, delivered),
        "redis_primaries_us_per_delivery": per_delivery_us(primaries, delivered),
        "redis_replicas_us_per_delivery": per_delivery_us(replicas, delivered)
        if replicas or any(r == "replica" for r in node_roles.values())
        else None,
        "redis_nodes": redis_nodes,
        "bench_us_per_delivery": per_delivery_us(bench_cpu, delivered),
        "other_us_per_delivery": per_delivery_us(
            max(0.0, machine - gw_total - redis_total - bench_cpu), delivered
        ),
    }


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the windows of every per-delivery figure."""
    first = windows[0]
    keys = (
        "achieved_rate_per_s",
        "events_per_pipeline",
        "gateways_us_per_delivery",
        "redis_primaries_us_per_delivery",
        "redis_replicas_us_per_delivery",
        "bench_us_per_delivery",
        "other_us_per_delivery",
    )
    out: dict[str, Any] = {
        key: median([w[key] for w in windows if w[key] is not None]) for key in keys
    }
    out["delivered"] = sum(w["delivered"] for w in windows)
    out["published"] = sum(w["published"] for w in windows)
    out["gateways"] = {
        name: median(
            [w["gateways"][name]["us_per_delivery"] for w in windows]
            if all(w["gateways"][name]["us_per_delivery"] is not None for w in windows)
            else []
        )
        for name in first["gateways"]
    }
    out["redis_nodes"] = {
        port: {
            "role": node["role"],
            "us_per_delivery": median(
                [w["redis_nodes"][port]["us_per_delivery"] or 0.0 for w in windows]
            ),
            "us_per_event_carried": median(
                [
                    w["redis_nodes"][port]["us_per_event_carried"]
                    for w in windows
                    if w["redis_nodes"][port]["us_per_event_carried"] is not None
                ]
            ),
            "share_of_events": round(
                sum(w["redis_nodes"][port]["events_carried"] or 0 for w in windows)
                / max(1, sum(w["published"] for w in windows)),
                3,
            )
            if node["role"] == "primary"
            else None,
            "bytes_written_per_delivery": median(
                [w["redis_nodes"][port]["bytes_written_per_delivery"] or 0.0 for w in windows]
            ),
        }
        for port, node in first["redis_nodes"].items()
    }
    return out


async def measure_config(
    kind: str,
    count: int,
    topo: Topology,
    cluster: ScalingCluster,
    users: list[User],
    heads: list[int],
    owner_of: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    gateways = cluster.gateways
    audit = Audit(len(users))
    keys = Keys(cluster.prefix)
    redis = command_client(topo.url, max_connections=4)
    node_roles = roles(topo)
    publisher = Publisher(redis, keys, users, heads, owner_of, audit)
    tasks: list[asyncio.Task[None]] = []
    retries: list[str] = []
    windows: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(connector=connector()) as http:
            try:
                await open_receivers(http, gateways, users, list(heads), audit, retries, tasks)
                channels = [keys.channel(u.id) for u in users]

                async def all_subscribed() -> bool:
                    return await subscribed(topo, channels) == len(channels)

                await wait_until("every channel to be subscribed", tasks, all_subscribed)
                for repeat in range(args.repeats):
                    window = await measure_window(
                        publisher, audit, tasks, gateways, topo, node_roles, args
                    )
                    windows.append(window)
                    log(
                        f"{kind}, {count} gateway(s), window {repeat + 1}: "
                        f"{window['delivered']} delivered at {window['achieved_rate_per_s']}/s, "
                        f"gateways {window['gateways_us_per_delivery']} us, redis primaries "
                        f"{window['redis_primaries_us_per_delivery']} us per delivery"
                    )
                await asyncio.sleep(LINGER)
            finally:
                for task in tasks:
                    task.cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await redis.aclose()
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            audit.receive_errors.append(f"receiver failed: {outcome!r}")
    summary = audit.summary()
    return {
        "redis": kind,
        "gateways": count,
        "receivers": len(users),
        "rate": args.rate,
        "duration": args.duration,
        "windows": windows,
        "median": summarize(windows),
        "audit": {
            k: summary[k]
            for k in (
                "sent",
                "received",
                "lost",
                "duplicated",
                "out_of_order",
                "seq_gaps",
                "unexpected",
                "receive_errors",
                "p50_ms",
                "p99_ms",
            )
        },
        "open_retries": len(retries),
        "open_retry_reasons": sorted(set(retries)),
        "failures": audit.failures(),
    }


# --- one topology -----------------------------------------------------------------------


async def measure_topology(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    log(f"{kind}: starting redis")
    topo = start_redis(kind, workdir / kind)
    out: dict[str, Any] = {
        "kind": kind,
        "url": topo.url,
        "redis_version": redis_version(topo),
        "nodes": {str(p): r for p, r in roles(topo).items()},
        "configurations": [],
    }
    try:
        async with throwaway_database(args.database_url, "scaling") as database_url:
            cluster = ScalingCluster(
                args.log_dir / kind,
                POLL_TIMEOUT_MAX,
                redis_url=topo.url,
                database_url=database_url,
            )
            try:
                await cluster.start_core()
                users: list[User] = []
                heads: list[int] = []
                owners = Owners(topo)
                await owners.load()
                keys = Keys(cluster.prefix)
                for count in args.gateway_counts:
                    log(f"{kind}: starting {count} gateway(s)")
                    await cluster.start_gateways(count, f"{kind}-{count}gw")
                    if not users:
                        users, heads = await make_users(cluster.gateways[0], args.receivers)
                    owner_of = [owners.of(keys.channel(u.id)) for u in users]
                    out["configurations"].append(
                        await measure_config(
                            kind, count, topo, cluster, users, heads, owner_of, args
                        )
                    )
                    await cluster.stop_gateways()
                if kind == "cluster":
                    log("cluster: SPUBLISH vs PUBLISH fan-out")
                    payload = sample_message(users[0], heads[0])
                    channels = [f"{cluster.prefix}:fanout:{{u:{u.id}}}:ch" for u in users]
                    out["fanout"] = await fanout_comparison(
                        topo, channels, payload, args.fanout_publishes
                    )
            finally:
                await cluster.stop()
                out["unclean_exits"] = cluster.unclean_exits()
                out["log_problems"] = cluster.log_problems()
    finally:
        topo.stop()
    return out


async def make_users(gateway: Service, count: int) -> tuple[list[User], list[int]]:
    log(f"registering {count} users")
    async with aiohttp.ClientSession(connector=connector()) as http:
        users = await create_users(http, gateway.url, "scale", count, SETUP_CONCURRENCY)
        heads = [await current_cursor(http, gateway.url, u) for u in users]
    return users, heads


def sample_message(user: User, seq: int) -> bytes:
    """A pub/sub message the size of the ones measured."""
    return Event(seq, event_json(seq, user, 0, 0, time.perf_counter())).to_message()


# --- the run ----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_files()
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "revision": revision(),
        "command": "python -m bench.scaling " + " ".join(sys.argv[1:]),
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "cpu_model": cpu_model(),
            "memory_mib": memory_mib(),
            "load_average_before": load_average(),
        },
        "config": {
            "gateways": args.gateway_counts,
            "redis": args.kinds,
            "receivers": args.receivers,
            "rate": args.rate,
            "duration": args.duration,
            "repeats": args.repeats,
            "database": args.database_url.split(":", 1)[0].split("+", 1)[0],
            "transport": "websocket",
        },
        "topologies": [],
    }
    with tempfile.TemporaryDirectory(prefix="longtail-scaling-redis-") as workdir:
        for kind in args.kinds:
            result["topologies"].append(await measure_topology(kind, args, Path(workdir)))
    result["machine"]["load_average_after"] = load_average()
    result["seconds"] = round(time.monotonic() - STARTED, 1)
    result["capacity"] = scaling_report.capacity_model(result, args)
    return result


def failures(result: dict[str, Any]) -> list[str]:
    found = []
    for topo in result["topologies"]:
        for config in topo["configurations"]:
            audit = config["audit"]
            if config["failures"]:
                found.append(
                    f"{topo['kind']}, {config['gateways']} gateway(s): lost {audit['lost']}, "
                    f"duplicated {audit['duplicated']}, out of order {audit['out_of_order']}, "
                    f"seq gaps {audit['seq_gaps']}, errors {audit['receive_errors'][:3]}"
                )
        found += [f"{topo['kind']}: {e}" for e in topo.get("unclean_exits", [])]
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except (BenchError, TopologyError, OSError) as exc:
        print(f"scaling: could not measure: {exc}", file=sys.stderr)
        return 2
    result["failures"] = failures(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(scaling_report.render(result))
    print(f"results: {args.output}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
