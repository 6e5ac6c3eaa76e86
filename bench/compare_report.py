"""What `bench.compare` found, for a person (the table), for tools (ratios, failures in
the JSON) and at a glance (the chart, bench.compare_chart)."""

from __future__ import annotations

import os
import platform
import sqlite3
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bench import machine
from bench.cluster import admin_dsn
from bench.compare_chart import draw

# Which socket.io transport each Longtail transport is held against: long-poll with
# socket.io's own long-polling; SSE (a one-way stream) with socket.io's best transport,
# WebSocket; WebSocket with WebSocket.
MATCHES = (("long-poll", "polling"), ("sse", "websocket"), ("websocket", "websocket"))
PHASES = ("held", "latency", "throughput", "fanout")
revision = machine.revision
load_average = machine.load_average


async def describe(redis_url: str, database_url: str) -> dict[str, Any]:
    """bench.machine's description, for the backends this run used."""
    redis = Redis.from_url(redis_url)
    try:
        info = await redis.info("server")
        redis_version = str(info.get("redis_version", "unknown"))
    except ResponseError:
        redis_version = "a server without INFO (fakeredis)"
    finally:
        await redis.aclose()
    commit_ms = None
    if database_url.startswith("sqlite"):
        database = f"SQLite {sqlite3.sqlite_version}"
    else:
        connection = await asyncpg.connect(admin_dsn(database_url), timeout=10)
        try:
            database = "PostgreSQL " + str(await connection.fetchval("SHOW server_version"))
            # What changes the figures: autovacuum is off on some CI machines' servers.
            settings = await connection.fetch(
                "SELECT name, setting FROM pg_settings"
                " WHERE name IN ('autovacuum', 'fsync', 'synchronous_commit') ORDER BY name"
            )
            database += "; " + ", ".join(f"{name} {value}" for name, value in settings)
            commit_ms = await machine.commit_floor_ms(connection)
        finally:
            await connection.close()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": machine.cpu_model(),
        "memory_mib": machine.memory_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis_version,
        "database": database,
        "commit_floor_p50_ms": commit_ms,
        "tornado": version("tornado"),
        "aiohttp": version("aiohttp"),
        "python_socketio": version("python-socketio"),
        "python_engineio": version("python-engineio"),
    }


# --- figures -------------------------------------------------------------------------


def held_kib(held: dict[str, Any] | None) -> float | None:
    """KiB per held connection at the largest step (RSS growth over idle / held)."""
    if not held or not held["steps"]:
        return None
    return float(held["steps"][-1]["kib_per_conn"])


def figures(system: dict[str, Any], transport: str) -> dict[str, float | None]:
    """The headline numbers of one system's transport (None: not measured)."""
    held = system["held"].get(transport)
    latency = system["latency"].get(transport, {}).get("summary", {})
    throughput = system["throughput"].get(transport, {})
    fanout = system["fanout"].get(transport, {}).get("all_members", {})
    kib = held_kib(held)
    return {
        "held_kib_per_conn": kib,
        "held_mib_per_1000": None if kib is None else round(kib * 1000 / 1024, 2),
        "held_max": held["steps"][-1]["held"] if held and held["steps"] else None,
        "latency_p50_ms": latency.get("p50_ms"),
        "latency_p95_ms": latency.get("p95_ms"),
        "latency_p99_ms": latency.get("p99_ms"),
        "latency_achieved_per_s": latency.get("achieved_rate_per_s"),
        "throughput_per_s": throughput.get("delivered_per_s"),
        "server_cpu_ms_per_event": throughput.get("server_cpu_ms_per_event"),
        "fanout_median_ms": fanout.get("median_ms"),
        "fanout_p99_ms": fanout.get("p99_ms"),
    }


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Longtail / python-socketio per metric and matched transport pair. Below 1 is
    better for Longtail on memory, latency and CPU; above 1 on throughput."""
    rows = []
    for lt_transport, sio_transport in MATCHES:
        lt = figures(results["longtail"], lt_transport)
        sio = figures(results["socketio"], sio_transport)
        for metric in lt:
            if metric == "held_max":
                continue
            a, b = lt[metric], sio[metric]
            rows.append(
                {
                    "metric": metric,
                    "longtail_transport": lt_transport,
                    "socketio_transport": sio_transport,
                    "longtail": a,
                    "socketio": b,
                    "ratio": round(a / b, 2) if a is not None and b else None,
                }
            )
    return rows


def runs(results: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(system, phase, transport, run) for every delivery run."""
    return [
        (system, phase, transport, run)
        for system in ("longtail", "socketio")
        for phase in ("latency", "throughput", "fanout")
        for transport, run in results[system][phase].items()
    ]


def failures(results: dict[str, Any]) -> list[str]:
    """Why this run does not count (empty: it does)."""
    found = list(results["unclean_exits"])
    problems = dict(results["log_problems"])
    held_problems(results, "longtail", found, problems)
    found += log_failures(problems)
    for system, phase, transport, run in runs(results):
        s = run["summary"] if "summary" in run else run["audit"]
        bad = {
            k: s[k]
            for k in ("lost", "duplicated", "out_of_order", "unexpected", "seq_gaps")
            if s[k]
        }
        errors = s["send_error_count"] + len(s["receive_errors"])
        if bad or errors:
            found.append(
                f"{system} {phase} {transport}: {bad} errors={errors} {s['receive_errors'][:1]}"
            )
    return found


def held_problems(
    results: dict[str, Any],
    system: str,
    found: list[str],
    problems: dict[str, list[dict[str, Any]]],
) -> None:
    for transport, held in results[system]["held"].items():
        found += [f"{system} held {transport}: {e}" for e in held["errors"]]
        if held["returned_early"]:
            found.append(f"{system} held {transport}: {held['returned_early']} ended early")
        if held.get("exit_code") not in (0, None):
            found.append(f"{held['server']} exited with {held['exit_code']}")
        if held.get("log_problems"):
            problems[held["server"]] = held["log_problems"]


def log_failures(problems: dict[str, list[dict[str, Any]]]) -> list[str]:
    return [
        f"{name} logged {p['count']}x: {p['line']}"
        for name, entries in problems.items()
        for p in entries
        if not p["line"].startswith("WARNING")
    ]


def socketio_findings(results: dict[str, Any]) -> list[str]:
    """What went wrong on python-socketio's side outside the delivery audit (its held
    connections dropped, a server that would not stop): reported, but the run measures
    Longtail, so these do not fail it. A lost or duplicated socket.io event does."""
    found = list(results["socketio_unclean_exits"])
    problems = dict(results["socketio_log_problems"])
    held_problems(results, "socketio", found, problems)
    return found + log_failures(problems)


def unmeasured(results: dict[str, Any]) -> list[str]:
    """Figures the run set out to measure and has no number for."""
    missing = []
    for system in ("longtail", "socketio"):
        transports = {lt if system == "longtail" else sio for lt, sio in MATCHES}
        for transport in sorted(transports):
            for metric, value in figures(results[system], transport).items():
                skipped = metric.startswith("held") and results["config"]["held_max"] is None
                if value is None and not skipped:
                    missing.append(f"{system} {transport}: {metric}")
    return missing


# --- the table -------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


LABELS = {
    "held_kib_per_conn": ("held: KiB per idle connection", ".1f"),
    "held_mib_per_1000": ("held: MiB per 1,000", ".1f"),
    "latency_p50_ms": ("latency p50 ms", ".1f"),
    "latency_p95_ms": ("latency p95 ms", ".1f"),
    "latency_p99_ms": ("latency p99 ms", ".1f"),
    "latency_achieved_per_s": ("latency: achieved msg/s", ".0f"),
    "throughput_per_s": ("throughput: delivered/s", ".0f"),
    "server_cpu_ms_per_event": ("server CPU ms per event", ".3f"),
    "fanout_median_ms": ("fan-out to all: median ms", ".1f"),
    "fanout_p99_ms": ("fan-out to all: p99 ms", ".1f"),
}


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    c = results["config"]
    lines = [
        f"Longtail vs python-socketio, {results['when']}, revision {results['revision']} "
        f"({results['seconds']:g}s)",
        f"machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['memory_mib']} MiB; Linux "
        f"{m['kernel']}; Python {m['python']}; Redis {m['redis']}; {m['database']}; "
        f"python-socketio {m['python_socketio']}",
        *(
            [
                f"a durable PostgreSQL commit alone (bench.machine.commit_floor_ms): p50 "
                f"{m['commit_floor_p50_ms']} ms"
            ]
            if m.get("commit_floor_p50_ms") is not None
            else []
        ),
        f"load average before/after: {results['load_average_before']} / "
        f"{results['load_average_after']}",
        f"held up to {c['held_max']} ({c['held_conns_per_user']} per user); latency "
        f"{c['rate_per_s']:g} msg/s over {c['pairs']} pairs; throughput {c['senders']} "
        f"closed-loop senders; {c['duration_s']:g}s each; fan-out {c['fanout_repeats']} x "
        f"{c['fanout_members']} members",
        "",
        f"  {'metric':<30} {'Longtail':<10} {'socket.io':<10} {'Longtail':>10} "
        f"{'socket.io':>10} {'LT/sio':>7}",
    ]
    for metric, (label, spec) in LABELS.items():
        for row in results["ratios"]:
            if row["metric"] != metric:
                continue
            lines.append(
                f"  {label:<30} {row['longtail_transport']:<10} {row['socketio_transport']:<10}"
                f" {_fmt(row['longtail'], spec):>10} {_fmt(row['socketio'], spec):>10}"
                f" {_fmt(row['ratio']):>7}"
            )
    lines += ["", *audit_lines(results), "", *cpu_lines(results)]
    return "\n".join(lines)


def audit_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "Delivery audit (sent/received; lost, duplicated, out of order, seq gaps, errors)",
        f"  {'system':<9} {'phase':<11} {'transport':<10} {'sent':>7} {'recv':>7} {'lost':>5}"
        f" {'dup':>4} {'ooo':>4} {'gaps':>5} {'err':>4}",
    ]
    for system, phase, transport, run in runs(results):
        s = run["summary"] if "summary" in run else run["audit"]
        errors = s["send_error_count"] + len(s["receive_errors"]) + s["unexpected"]
        lines.append(
            f"  {system:<9} {phase:<11} {transport:<10} {s['sent']:>7} {s['received']:>7}"
            f" {s['lost']:>5} {s['duplicated']:>4} {s['out_of_order']:>4} {s['seq_gaps']:>5}"
            f" {errors:>4}"
        )
    for system in ("longtail", "socketio"):
        for transport, held in results[system]["held"].items():
            steps = ", ".join(
                f"{s['held']}: {s['rss_kib'] / 1024:.1f} MiB ({s['kib_per_conn']:.1f} KiB each)"
                for s in held["steps"]
            )
            lines.append(
                f"  held {system} {transport}: idle {held['idle_rss_kib'] / 1024:.1f} MiB; {steps}"
            )
    return lines


def cpu_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "CPU ms per delivered event, throughput phase (postgres, redis-server: every such "
        "process on the machine; other: the rest of the machine)"
    ]
    for system in ("longtail", "socketio"):
        for transport, run in results[system]["throughput"].items():
            cpu = ", ".join(f"{k} {v:.3f}" for k, v in run["cpu_ms_per_event"].items())
            lines.append(f"  {system} {transport}: {cpu}")
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    draw(results, path, figures)
