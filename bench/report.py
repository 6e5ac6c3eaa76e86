"""The plain-text table a person reads (the JSON next to it is for tools)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu_model']}, {m['nproc']} CPUs, {m['memory_mib']} MiB RAM, "
        f"Linux {m['kernel']}; Python {m['python']}, Tornado {m['tornado']}; "
        f"Redis {m['redis']}; PostgreSQL {m['postgresql']}"
    )


def held_table(held: dict[str, Any]) -> list[str]:
    lines = [
        f"Idle long-polls held by gateway 1 ({held['conns_per_user']} per user, "
        f"timeout={held['poll_timeout_s']:g}s), RSS from /proc/PID/status VmRSS",
        "  KiB/held: (RSS - idle RSS) / held; marginal: since the previous step",
        f"  {'held':>6} {'users':>6} {'RSS MiB':>9} {'KiB/held':>9} {'MiB/1000':>9}"
        f" {'marginal':>9} {'s to hold':>10}",
        f"  {0:>6} {'-':>6} {held['idle_rss_kib'] / 1024:>9.1f} {'-':>9} {'-':>9} {'-':>9}"
        f" {'-':>10}",
    ]
    for step in held["steps"]:
        lines.append(
            f"  {step['held']:>6} {step['users']:>6} {step['rss_kib'] / 1024:>9.1f}"
            f" {step['kib_per_conn']:>9.2f} {step['mib_per_1000']:>9.2f}"
            f" {step['marginal_kib_per_conn']:>9.2f} {step['seconds_to_hold']:>10.2f}"
        )
    lines.append(f"  all released: RSS {held['rss_after_release_kib'] / 1024:.1f} MiB")
    for step in held["rehold"]:
        lines.append(
            f"  held {step['held']} again: RSS {step['rss_kib'] / 1024:.1f} MiB, "
            f"{step['kib_per_conn']:+.2f} KiB/held over the released state"
        )
    return lines


def latency_table(runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return []
    first = runs[0]
    lines = [
        f"Cross-gateway latency: send on gateway 1, receive on gateway 2; {first['pairs']} "
        f"pairs, {first['rate']:g} msg/s for {first['duration']:g}s "
        f"(send start -> event read by the receiver)",
        "  sent: of the scheduled messages, those whose slot came before the end of the "
        "window (sends are sequential per pair)",
        f"  {'transport':<10} {'sched':>6} {'sent':>6} {'recv':>6} {'msg/s':>7} {'p50 ms':>7}"
        f" {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'lost':>5} {'dup':>4} {'ooo':>4}"
        f" {'gaps':>5} {'errors':>6}",
    ]
    for run in runs:
        s = run["summary"]
        errors = s["send_error_count"] + len(s["receive_errors"]) + s["unexpected"]
        lines.append(
            f"  {run['transport']:<10} {s['scheduled']:>6} {s['sent']:>6} {s['received']:>6}"
            f" {_fmt(s['achieved_rate_per_s'], '.1f'):>7} {_fmt(s['p50_ms'], '.2f'):>7}"
            f" {_fmt(s['p95_ms'], '.2f'):>7} {_fmt(s['p99_ms'], '.2f'):>7}"
            f" {_fmt(s['max_ms'], '.2f'):>7} {s['lost']:>5} {s['duplicated']:>4}"
            f" {s['out_of_order']:>4} {s['seq_gaps']:>5} {errors:>6}"
        )
    for run in runs:
        rtt = run["summary"]["send_round_trip"]
        lines.append(
            f"  {run['transport']}: the sender's POST /api/messages took "
            f"p50 {_fmt(rtt['p50_ms'], '.2f')} ms, p99 {_fmt(rtt['p99_ms'], '.2f')} ms"
        )
    names = list(runs[0]["cpu_ms_per_message"])
    lines.append(
        "  CPU ms per delivered message (postgres: all its processes on the machine; "
        "other: the rest of the machine)"
    )
    lines.append(f"  {'transport':<10}" + "".join(f" {name:>9}" for name in names))
    for run in runs:
        cpu = run["cpu_ms_per_message"]
        lines.append(f"  {run['transport']:<10}" + "".join(f" {cpu[n]:>9.2f}" for n in names))
    return lines


def log_lines(problems: dict[str, list[dict[str, Any]]]) -> list[str]:
    if not problems:
        return ["Process logs: no warnings or errors"]
    lines = ["Process logs, most frequent warnings and errors:"]
    for name, entries in problems.items():
        lines += [f"  {name}: {e['count']}x {e['line']}" for e in entries]
    return lines


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Longtail bench, {results['when']}, revision {results['revision']} "
        f"({results['seconds']:g}s)",
        f"machine: {machine_line(results['machine'])}",
        f"load average before/after: {results['load_average_before']} / "
        f"{results['load_average_after']}",
        "",
    ]
    lines += held_table(results["held"])
    lines.append("")
    lines += latency_table(results["latency"])
    lines.append("")
    lines += log_lines(results["log_problems"])
    return "\n".join(lines)
