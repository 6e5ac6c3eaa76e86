"""The sending gateway under closed-loop sends: CPU per send of every process, repeated.

    python -m bench.profile_post [--transport sse|long-poll|websocket] [--runs 3]
                                 [--rate R] [--bystanders N] [--py-spy FILE]
                                 [--output FILE]

bench.compare's throughput phase alone, for Longtail only: chatcore on a throw-away
PostgreSQL database, two gateways, real Redis; --senders closed-loop senders on gateway
1 (POST /api/messages, or `send` frames on their WebSockets for --transport websocket),
their receivers on gateway 2 over --transport. Each run is a fresh deployment, audited
like bench.compare's (nothing lost, duplicated or out of order, or the exit is 1), and
prints delivered/s and CPU ms per event by process; the last line gives the medians.
`--bystanders N` adds N users who never send (bench.population), so that the tables are
a deployment's size.

It answers "did this change make the sending gateway cheaper?" in a few minutes, where
a whole bench.compare run takes ten. To compare two checkouts, run it from each in
turn, alternating (`cd DIR && PYTHONPATH=DIR python -m bench.profile_post`): the
processes it starts import the code of the directory it runs in. `--py-spy FILE` adds
a run that is not counted, and writes py-spy's raw samples of one process during it
(`--sample`: gateway1, the sending one, by default; py-spy is a profiling tool, not a
project dependency: `pip install py-spy`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench import longtail_side
from bench.cluster import BenchError, Service, raise_open_files
from bench.load import WARMUP, TimedAudit, drive
from bench.population import add_bystanders
from bench.profile_send import PY_SPY_RATE, stop_py_spy, summarize_py_spy
from bench.run import make_pairs
from longtail.wire import Keys

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/postgres"


async def one_run(args: argparse.Namespace, spy_to: str | None) -> dict[str, Any]:
    """A fresh deployment, its senders and receivers, one measured window."""
    log_dir = Path(tempfile.mkdtemp(prefix="profile_post-"))
    async with longtail_side.running_longtail(
        log_dir, args.redis_url, args.database_url
    ) as cluster:
        if args.bystanders:
            await add_bystanders(cluster.database_url, args.bystanders)
        gw1, gw2 = cluster.gateways
        sampled = {"gateway1": gw1, "gateway2": gw2, "chatcore": cluster.chatcore}
        redis = Redis.from_url(args.redis_url)
        try:
            async with longtail_side.client_session() as http:
                pairs = await make_pairs(http, gw2.url, args.senders)
            receivers = [p.receiver for p in pairs]
            audit = TimedAudit(len(pairs), warmup=WARMUP if args.rate else 0)
            async with (
                longtail_side.listening(
                    args.transport,
                    gw2,
                    receivers,
                    [audit] * len(pairs),
                    redis,
                    Keys(cluster.prefix),
                ) as tasks,
                longtail_side.client_session() as http,
                longtail_side.message_poster(
                    args.transport, http, gw1, [p.sender for p in pairs]
                ) as posts,
            ):
                spy = None
                if spy_to is not None:
                    spy = subprocess.Popen(
                        [
                            *("py-spy", "record", "--rate", str(PY_SPY_RATE), "--format", "raw"),
                            *("--output", spy_to, "--pid", str(sampled[args.sample].pid)),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                try:
                    result = await drive(
                        longtail_side.direct_sender(posts, pairs),
                        len(pairs),
                        audit,
                        tasks,
                        [gw1, gw2, cluster.chatcore],
                        duration=args.seconds,
                        rate=args.rate,
                    )
                finally:
                    await stop_py_spy(spy)
            async with longtail_side.client_session() as http:
                result["stages_ms"] = {
                    # Batches go over the sends socket since it came; a checkout from
                    # before it posts them.
                    "chatcore_hop": await histogram_mean(
                        http, gw1, "longtail_chatcore_request_seconds", route="WS /internal/sends"
                    )
                    or await histogram_mean(
                        http, gw1, "longtail_chatcore_request_seconds", route="POST /internal/sends"
                    ),
                    "publish_to_write": await histogram_mean(
                        http, gw2, "longtail_publish_to_delivery_seconds"
                    ),
                }
        finally:
            await redis.aclose()
    return result


async def histogram_mean(
    http: aiohttp.ClientSession, gateway: Service, name: str, **labels: str
) -> float | None:
    """A histogram's mean in ms from a gateway's /metrics (its whole life: a fresh
    deployment's, whose setup made no sends)."""
    totals = {
        sample.name: sample.value
        for sample in await longtail_side.metric_samples(http, gateway)
        if sample.name in (f"{name}_sum", f"{name}_count")
        and labels.items() <= sample.labels.items()
    }
    if not totals.get(f"{name}_count"):
        return None
    return round(1000 * totals[f"{name}_sum"] / totals[f"{name}_count"], 3)


def line(result: dict[str, Any]) -> str:
    cpu = ", ".join(f"{name} {ms:.3f}" for name, ms in result["cpu_ms_per_event"].items())
    text = f"{result['delivered_per_s']} delivered/s; CPU ms per event: {cpu}"
    if result.get("rate") is not None:
        summary, answer = result["summary"], result["summary"]["send_round_trip"]
        text += (
            f"; latency p50 {summary['p50_ms']} p99 {summary['p99_ms']}"
            f" max {summary['max_ms']} ms"
            f", answer p50 {answer['p50_ms']} p99 {answer['p99_ms']} ms"
        )
    stages = result.get("stages_ms")
    if stages:
        text += "; means: " + ", ".join(f"{name} {ms} ms" for name, ms in stages.items())
    return text


def medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    names = results[0]["cpu_ms_per_event"]
    return {
        "delivered_per_s": statistics.median(r["delivered_per_s"] or 0 for r in results),
        "cpu_ms_per_event": {
            n: round(statistics.median(r["cpu_ms_per_event"][n] for r in results), 3) for n in names
        },
    }


async def profile(args: argparse.Namespace) -> int:
    results = []
    # py-spy takes CPU of its own: its run comes after the measured ones, uncounted.
    for run in range(args.runs + (1 if args.py_spy else 0)):
        sampled = run == args.runs
        result = await one_run(args, args.py_spy if sampled else None)
        label = "sampled run (not counted)" if sampled else f"run {run + 1}"
        print(f"{label}: {line(result)}", flush=True)
        if result["failures"]:
            print(f"{label} failed its audit: {result['failures']}", file=sys.stderr)
            return 1
        if not sampled:
            results.append(result)
    summary = medians(results) if results else None
    if summary is not None:
        print(f"medians of {len(results)}: {line(summary)}")
    if args.py_spy:
        print(summarize_py_spy(Path(args.py_spy), args.top))
    if args.output:
        Path(args.output).write_text(
            json.dumps({"args": vars(args), "runs": results, "medians": summary}, indent=1)
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=longtail_side.TRANSPORTS, default="sse")
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, help="msg/s in total, paced (the latency phase); default closed loop"
    )
    parser.add_argument(
        "--bystanders",
        type=int,
        default=0,
        help="users who never send, added to the database first (PostgreSQL only)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE)
    parser.add_argument("--py-spy", help="raw py-spy samples of one process, in one more run")
    parser.add_argument(
        "--sample", choices=("gateway1", "gateway2", "chatcore"), default="gateway1"
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output", help="JSON results")
    args = parser.parse_args(argv)
    if args.bystanders and args.database_url.startswith("sqlite"):
        parser.error("--bystanders needs a PostgreSQL --database-url")
    raise_open_files()
    try:
        return asyncio.run(profile(args))
    except BenchError as exc:
        print(f"profile_post: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
