"""`bench.scaling`'s table and capacity model.

The model turns the measured CPU per delivery into processes and primaries for a given
number of online users. Its assumptions are arguments, printed next to the answer:

- each online user holds one connection and receives --events-per-user events/s;
- a held connection costs --kib-per-held KiB of gateway RSS, and one gateway process
  holds at most --held-per-process connections (open files: 20,000 per process here);
- one gateway process per core, run at most at --target-utilisation;
- idle connections get a heartbeat frame every --heartbeat seconds; the bench does not
  measure them, and the model charges each one a whole delivery's gateway CPU (an upper
  bound: a heartbeat skips the hub and Redis);
- a Redis primary is one core (its command thread), also at --target-utilisation, and
  carries its share of the events by slot.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--users", default="100000,1000000", help="online users to size for")
    add("--events-per-user", type=float, default=0.1, help="events/s per online user (0.1)")
    add("--kib-per-held", type=float, default=20.0, help="gateway RSS per connection (20)")
    add("--held-per-process", type=int, default=15_000, help="connections per gateway")
    add("--heartbeat", type=float, default=15.0, help="seconds between heartbeats (15)")
    add("--target-utilisation", type=float, default=0.7, help="CPU share to plan for (0.7)")


def _configs(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(t["kind"], c) for t in result["topologies"] for c in t["configurations"]]


def inputs(result: dict[str, Any]) -> dict[str, Any]:
    """The measured figures the model uses: the worst configuration's gateway cost, and
    a primary's cost per event it carries (the Cluster's median primary if measured)."""
    gateway = [c["median"]["gateways_us_per_delivery"] for _, c in _configs(result)]
    single = [
        c["median"]["redis_primaries_us_per_delivery"]
        for kind, c in _configs(result)
        if kind == "single"
    ]
    per_primary = [
        node["us_per_event_carried"]
        for kind, c in _configs(result)
        if kind == "cluster"
        for node in c["median"]["redis_nodes"].values()
        if node["role"] == "primary" and node["us_per_event_carried"] is not None
    ]
    replicas = [
        c["median"]["redis_replicas_us_per_delivery"]
        for kind, c in _configs(result)
        if kind == "cluster" and c["median"]["redis_replicas_us_per_delivery"] is not None
    ]
    gateway = [g for g in gateway if g is not None]
    primary_source = "cluster primaries, median per event carried"
    primary = _median(per_primary)
    if primary is None:
        primary, primary_source = _median([s for s in single if s is not None]), "single server"
    return {
        "gateway_us_per_delivery": max(gateway) if gateway else None,
        "gateway_source": "the highest configuration median",
        "primary_us_per_event": primary,
        "primary_source": primary_source,
        "single_server_us_per_event": _median([s for s in single if s is not None]),
        "replicas_us_per_delivery_total": _median(replicas),
    }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def capacity_model(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    measured = inputs(result)
    assumptions = {
        "events_per_user_per_s": args.events_per_user,
        "kib_per_held_connection": args.kib_per_held,
        "held_per_gateway_process": args.held_per_process,
        "heartbeat_s": args.heartbeat,
        "target_utilisation": args.target_utilisation,
        "one_connection_per_user": True,
    }
    sizes = []
    gw_us, primary_us = measured["gateway_us_per_delivery"], measured["primary_us_per_event"]
    for users in (int(u) for u in args.users.split(",") if u.strip()):
        deliveries = users * args.events_per_user
        heartbeats = users / args.heartbeat
        row: dict[str, Any] = {"users": users, "deliveries_per_s": round(deliveries)}
        if gw_us is not None:
            cores = (deliveries + heartbeats) * gw_us / 1e6 / args.target_utilisation
            by_held = math.ceil(users / args.held_per_process)
            row.update(
                gateway_cores_for_cpu=round(cores, 2),
                gateway_processes_for_cpu=max(1, math.ceil(cores)),
                gateway_processes_for_connections=by_held,
                gateway_processes=max(by_held, math.ceil(cores)),
                gateway_rss_gib=round(users * args.kib_per_held / 1024 / 1024, 1),
            )
        if primary_us is not None:
            load = deliveries * primary_us / 1e6 / args.target_utilisation
            row.update(
                redis_primary_cores=round(load, 3),
                redis_primaries=max(1, math.ceil(load)),
            )
        sizes.append(row)
    return {"measured": measured, "assumptions": assumptions, "sizes": sizes}


def _fmt(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.2f}"


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    cfg = result["config"]
    lines = [
        f"Longtail scaling bench, {result['started']}, revision {result['revision']} "
        f"({result['seconds']}s)",
        f"machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['memory_mib']} MiB; load average "
        f"before/after {m['load_average_before']} / {m['load_average_after']}",
        f"{cfg['receivers']} receivers (one WebSocket each), {cfg['rate']:g} events/s for "
        f"{cfg['duration']:g}s x {cfg['repeats']} windows per configuration; "
        f"database {cfg['database']}",
        "",
        "CPU us per delivery, medians over the windows (from /proc; gw: each gateway's CPU"
        " / events it delivered;",
        "redis: CPU of the primaries / of the replicas, summed, per delivery)",
        f"  {'redis':8} {'gws':>3} {'delivered':>9} {'ev/s':>7}  {'gw each':<26} "
        f"{'gw all':>8} {'primaries':>9} {'replicas':>8} {'bench':>7} {'lost':>4} {'dup':>3} "
        f"{'ooo':>3} {'p50 ms':>7} {'p99 ms':>7}",
    ]
    for topo in result["topologies"]:
        for c in topo["configurations"]:
            med, audit = c["median"], c["audit"]
            each = " ".join(f"{v:.1f}" if v is not None else "-" for v in med["gateways"].values())
            lines.append(
                f"  {topo['kind']:8} {c['gateways']:>3} {med['delivered']:>9} "
                f"{med['achieved_rate_per_s']:>7.0f}  {each:<26} "
                f"{_fmt(med['gateways_us_per_delivery'])} "
                f"{_fmt(med['redis_primaries_us_per_delivery'], 9)} "
                f"{_fmt(med['redis_replicas_us_per_delivery'])} "
                f"{_fmt(med['bench_us_per_delivery'], 7)} {audit['lost']:>4} "
                f"{audit['duplicated']:>3} {audit['out_of_order']:>3} "
                f"{_fmt(audit['p50_ms'], 7)} {_fmt(audit['p99_ms'], 7)}"
            )
    for topo in result["topologies"]:
        if topo["kind"] != "cluster":
            continue
        lines += ["", "Cluster, per node (us of its CPU per delivery; primaries also per event"
                  " they carried)"]  # fmt: skip
        lines.append(
            f"  {'gws':>3} {'port':>6} {'role':8} {'share':>6} {'us/deliv':>9} "
            f"{'us/carried':>10} {'bytes out/deliv':>15}"
        )
        for c in topo["configurations"]:
            for port, node in c["median"]["redis_nodes"].items():
                share = node["share_of_events"]
                lines.append(
                    f"  {c['gateways']:>3} {port:>6} {node['role']:8} "
                    f"{'-' if share is None else f'{share:.2f}':>6} "
                    f"{_fmt(node['us_per_delivery'], 9)} "
                    f"{_fmt(node['us_per_event_carried'], 10)} "
                    f"{node['bytes_written_per_delivery']:>15.0f}"
                )
        fanout = topo.get("fanout")
        if fanout:
            lines += [
                "",
                f"Cluster fan-out of one publish ({fanout['publishes']} each, "
                f"{fanout['payload_bytes']}-byte payload, channels without subscribers)",
                f"  {'command':9} {'bus msgs':>8} {'bytes written':>13} {'CPU us (all nodes)':>18}",
            ]
            for command in ("spublish", "publish"):
                f = fanout[command]
                lines.append(
                    f"  {command.upper():9} {f['bus_messages_per_publish']:>8.2f} "
                    f"{f['bytes_written_per_publish']:>13.0f} {f['cpu_us_per_publish']:>18.2f}"
                )
    model = result["capacity"]
    measured, assumed = model["measured"], model["assumptions"]
    lines += [
        "",
        f"Capacity model: gateway {measured['gateway_us_per_delivery']} us per delivery "
        f"({measured['gateway_source']}), Redis primary {measured['primary_us_per_event']} us "
        f"per event ({measured['primary_source']})",
        f"  assumed: {assumed['events_per_user_per_s']:g} events/s per user, one connection "
        f"each, {assumed['kib_per_held_connection']:g} KiB and at most "
        f"{assumed['held_per_gateway_process']} per gateway process, a heartbeat every "
        f"{assumed['heartbeat_s']:g}s charged as a delivery, "
        f"{assumed['target_utilisation']:.0%} CPU target, one process per core",
        f"  {'users':>9} {'deliv/s':>8} {'gw cores(cpu)':>13} {'gw procs(conns)':>15} "
        f"{'gateways':>8} {'gw RSS GiB':>10} {'primaries':>9}",
    ]
    for row in model["sizes"]:
        lines.append(
            f"  {row['users']:>9} {row['deliveries_per_s']:>8} "
            f"{row.get('gateway_cores_for_cpu', '-'):>13} "
            f"{row.get('gateway_processes_for_connections', '-'):>15} "
            f"{row.get('gateway_processes', '-'):>8} {row.get('gateway_rss_gib', '-'):>10} "
            f"{row.get('redis_primaries', '-'):>9}"
        )
    problems = {name: p for t in result["topologies"] for name, p in t["log_problems"].items()}
    if problems:
        lines += ["", "Process logs, most frequent warnings and errors:"]
        for name, found in problems.items():
            for p in found[:3]:
                lines.append(f"  {name}: {p['count']}x {p['line']}")
    if result.get("failures"):
        lines += ["", "FAILURES:"] + [f"  {f}" for f in result["failures"]]
    return "\n".join(lines)
