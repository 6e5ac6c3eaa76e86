"""Profile chatcore's send path: CPU and SQL statements per send, throughput, latency.

    python -m bench.profile_send [--compare DIR] [--py-spy FILE] [--database sqlite]

chatcore runs as its own process (the figures come from /proc, never from the inside)
against a throw-away PostgreSQL database (or a SQLite file) and real Redis under a random
prefix. The driver talks to chatcore's internal API as a gateway does, and measures:

1. **Saturation**: N sends with C in flight (each worker owns its own sender/receiver
   pairs, so a pair never races itself): sends/s, chatcore CPU ms per send (process CPU
   time / sends, the stable figure on a small shared machine), PostgreSQL CPU ms per
   send, and SQL statements, BEGINs, COMMITs and statements prepared (a round trip
   and a parse and plan in PostgreSQL each) per send. Prepares are SQLAlchemy's: the
   send path's statements (chatcore.db.Tx) use asyncpg's own per-connection cache.
2. **Fixed rate**: R sends/s for S seconds, open loop: the internal send call's p50/p99.

`--compare DIR` runs the same phases first against another checkout of the code (for
example `git archive HEAD | tar -x -C /tmp/base`) and prints both side by side.
`--py-spy FILE` samples chatcore during the saturation phase (or with `--py-spy-phase
rate`, the fixed-rate one, which then runs first) and prints where the time goes
(py-spy is a profiling tool, not a project dependency: `pip install py-spy`). Its
samples count a thread preempted inside a syscall as busy: on a loaded 2-core machine
the socket writes to PostgreSQL look far costlier than the CPU time they take.

The chatcore child is this file run as `serve`: the stock Chatcore with a statement
counter attached to its engine, dumping the counts on SIGUSR1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
READY_DEADLINE = 30.0
# A send whose answer takes longer than this is a failure, not a figure.
CALL_TIMEOUT = 30.0
PY_SPY_RATE = 250


# --- the chatcore child -------------------------------------------------------------


def serve(port: int, stats_path: str) -> None:
    """Run the stock Chatcore with a statement counter; SIGUSR1 writes the counts."""
    from sqlalchemy import event

    from chatcore.app import Chatcore
    from longtail import logs
    from longtail.settings import Settings

    settings = Settings.from_env()
    logs.configure("WARNING", "text")
    counts: Counter[str] = Counter()

    async def main() -> None:
        core = Chatcore(settings)
        engine = core.db.engine.sync_engine

        @event.listens_for(engine, "before_cursor_execute")
        def _statement(*args: Any) -> None:
            counts["statements"] += 1
            counts[args[2].lstrip().split(None, 1)[0].upper()] += 1

        if core.db.engine.dialect.name != "postgresql":

            @event.listens_for(engine, "begin")
            def _begin(_conn: Any) -> None:
                counts["begins"] += 1

            @event.listens_for(engine, "commit")
            def _commit(_conn: Any) -> None:
                counts["commits"] += 1

        else:
            # The send path's statements, BEGINs and COMMITs go to asyncpg itself
            # (chatcore.db.Tx), past SQLAlchemy's events: asyncpg's query log sees those
            # and every BEGIN and COMMIT (SQLAlchemy's statements it does not log).
            import asyncpg

            from chatcore.db import watch_statements

            def _logged(query: str) -> None:
                verb = query.lstrip().split(None, 1)[0].upper().rstrip(";")
                if verb in ("BEGIN", "COMMIT"):
                    counts[f"{verb.lower()}s"] += 1
                elif verb != "ROLLBACK":
                    counts["statements"] += 1
                    counts[verb] += 1

            watch_statements(core.db.engine, _logged)

            prepare = asyncpg.Connection.prepare

            async def _prepare(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
                counts["prepares"] += 1
                return await prepare(self, *args, **kwargs)

            asyncpg.Connection.prepare = _prepare  # type: ignore[method-assign]

        await core.start(port)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, done.set)
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: Path(stats_path).write_text(json.dumps(counts))
        )
        print("ready", flush=True)
        await done.wait()
        await core.stop()

    asyncio.run(main())


# --- the driver ---------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase cost: wall time, CPU, statements, and each call's latency."""

    sends: int = 0
    seconds: float = 0.0
    core_cpu: float = 0.0
    core_sys: float = 0.0
    pg_cpu: float = 0.0
    redis_cpu: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        n = max(self.sends, 1)
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        return {
            "sends": self.sends,
            "errors": self.errors,
            "sends_per_s": round(self.sends / self.seconds, 1) if self.seconds else 0,
            "core_cpu_ms": round(self.core_cpu * 1000 / n, 3),
            "core_sys_ms": round(self.core_sys * 1000 / n, 3),
            "pg_cpu_ms": round(self.pg_cpu * 1000 / n, 3),
            "redis_cpu_ms": round(self.redis_cpu * 1000 / n, 3),
            "statements": round(self.counts["statements"] / n, 2),
            "begins": round(self.counts["begins"] / n, 3),
            "prepares": round(self.counts["prepares"] / n, 3),
            "commits": round(self.counts["commits"] / n, 3),
            "by_verb": {
                k: round(v / n, 2)
                for k, v in sorted(self.counts.items())
                if k.isupper() and k not in ("statements",)
            },
            "p50_ms": round(pct(0.50), 2),
            "p95_ms": round(pct(0.95), 2),
            "p99_ms": round(pct(0.99), 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else float("nan"),
        }


def cpu_seconds(pid: int, *, children: bool = False, system_only: bool = False) -> float:
    """User + system CPU time of a process from /proc (or its system part alone)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[12]) if system_only else int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_by_command(name: str) -> float:
    """All processes called `name` (every PostgreSQL backend, say), exited ones included."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError, ValueError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    total += cpu_seconds(int(entry), children=True)
    return total


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Core:
    """One chatcore child on a fresh database, and the calls the driver makes to it."""

    def __init__(self, code_root: Path, database: str, label: str) -> None:
        self.code_root = code_root
        self.label = label
        self.kind = database
        self.db_name = f"longtail_psend_{secrets.token_hex(4)}"
        self.prefix = f"psend{secrets.token_hex(4)}"
        self.secret = secrets.token_hex(16)
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="profile_send_"))
        self.stats_path = self.tmp / "stats.json"
        self.process: subprocess.Popen[bytes] | None = None
        self.http: Any = None

    @property
    def database_url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp / 'profile.sqlite3'}"
        return f"postgresql://postgres@{HOST}:5432/{self.db_name}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(self.code_root),
            "CHATCORE_HOST": HOST,
            "CHATCORE_URL": f"http://{HOST}:{self.port}",
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": self.database_url,
            "LONGTAIL_SECRET": self.secret,
            "LONGTAIL_REDIS_PREFIX": self.prefix,
            "LONGTAIL_ARGON2_MEMORY_KIB": "64",
            "LONGTAIL_ARGON2_TIME_COST": "1",
            "LONGTAIL_LOG_LEVEL": "WARNING",
        }

    async def start(self) -> None:
        import aiohttp
        import asyncpg

        if self.kind == "postgresql":
            admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
            try:
                await admin.execute(f'CREATE DATABASE "{self.db_name}"')
            finally:
                await admin.close()
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "longtail.cli", "migrate", env=self.env(), cwd=self.code_root
        )
        if await migrate.wait() != 0:
            raise RuntimeError("migrate failed")
        self.process = subprocess.Popen(
            [sys.executable, "-P", __file__, "serve", str(self.port), str(self.stats_path)],
            env=self.env(),
            cwd=self.code_root,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(
            asyncio.to_thread(self.process.stdout.readline), READY_DEADLINE
        )
        if line.strip() != b"ready":
            raise RuntimeError(f"chatcore did not start ({line!r})")
        self.http = aiohttp.ClientSession(
            base_url=f"http://{HOST}:{self.port}",
            headers={"Authorization": f"Bearer {self.secret}"},
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
        )

    async def stop(self) -> None:
        import asyncpg
        from redis.asyncio import Redis

        if self.http is not None:
            await self.http.close()
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.process.wait, 15)
        redis = Redis.from_url(REDIS_URL)
        keys = [k async for k in redis.scan_iter(match=f"{self.prefix}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await redis.delete(*keys[i : i + 1000])
        await redis.aclose()
        if self.kind == "postgresql":
            admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            finally:
                await admin.close()

    async def call(self, path: str, body: dict[str, Any], expect: int = 200) -> Any:
        async with self.http.post(path, json=body) as resp:
            text = await resp.text()
            if resp.status not in (expect, 200):
                raise RuntimeError(f"POST {path} -> {resp.status}: {text[:200]}")
            return json.loads(text)

    async def counts(self) -> Counter[str]:
        """The child's statement counts, as of now (SIGUSR1, then the file it writes)."""
        assert self.process is not None
        self.stats_path.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        for _ in range(200):
            with suppress(OSError, ValueError):
                return Counter(json.loads(self.stats_path.read_text()))
            await asyncio.sleep(0.01)
        raise RuntimeError("no statement counts from chatcore")


async def make_pairs(core: Core, pairs: int) -> list[tuple[int, int]]:
    """`pairs` befriended (sender, receiver) user ids."""
    result = []
    for i in range(pairs):
        a, b = f"pa{i}", f"pb{i}"
        ids = []
        for name in (a, b):
            user = await core.call(
                "/internal/register", {"username": name, "password": "profile-pw"}, 201
            )
            ids.append(int(user["id"]))
        await core.call(f"/internal/users/{ids[0]}/friends", {"username": b}, 201)
        await core.call(f"/internal/users/{ids[1]}/friends", {"username": a}, 201)
        result.append((ids[0], ids[1]))
    return result


class Sender:
    """Numbered sends over the pairs; each body and client_id is unique to the run."""

    def __init__(self, core: Core, pairs: list[tuple[int, int]]) -> None:
        self.core = core
        self.pairs = pairs
        self.n = 0

    async def send(self, pair: int, phase: Phase) -> None:
        self.n += 1
        sender, receiver = self.pairs[pair]
        body = {"to": receiver, "body": f"message {self.n}", "client_id": f"c{self.n}"}
        start = time.perf_counter()
        try:
            await self.core.call(f"/internal/users/{sender}/messages", body, 201)
        except Exception as exc:
            phase.errors += 1
            if phase.errors <= 3:
                print(f"send failed: {exc}", file=sys.stderr)
            return
        phase.latencies.append(time.perf_counter() - start)
        phase.sends += 1


async def measured(core: Core, phase: Phase, run: Any) -> Phase:
    """Run `run()` and charge the process CPU and statements it caused to `phase`."""
    assert core.process is not None
    pid = core.process.pid
    before = await core.counts()
    cpu0, pg0, rd0 = cpu_seconds(pid), cpu_by_command("postgres"), cpu_by_command("redis-server")
    sys0 = cpu_seconds(pid, system_only=True)
    t0 = time.perf_counter()
    await run()
    phase.seconds = time.perf_counter() - t0
    phase.core_cpu = cpu_seconds(pid) - cpu0
    phase.core_sys = cpu_seconds(pid, system_only=True) - sys0
    phase.pg_cpu = cpu_by_command("postgres") - pg0
    phase.redis_cpu = cpu_by_command("redis-server") - rd0
    after = await core.counts()
    after.subtract(before)
    phase.counts = after
    return phase


async def saturate(sender: Sender, total: int, concurrency: int) -> Phase:
    """`total` sends, `concurrency` at a time; worker w uses pairs w, w+C, w+2C..."""
    phase = Phase()
    remaining = total

    async def worker(w: int) -> None:
        nonlocal remaining
        mine = list(range(w, len(sender.pairs), concurrency))
        i = 0
        while remaining > 0:
            remaining -= 1
            await sender.send(mine[i % len(mine)], phase)
            i += 1

    async def run() -> None:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))

    return await measured(sender.core, phase, run)


async def fixed_rate(sender: Sender, rate: float, seconds: float) -> Phase:
    """Open loop: send i starts at t0 + i/rate, whether or not earlier ones finished."""
    phase = Phase()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(sender.send(i % len(sender.pairs), phase)))
        await asyncio.gather(*tasks)

    return await measured(sender.core, phase, run)


def summarize_py_spy(path: Path, top: int) -> str:
    """Inclusive and self sample shares per function from py-spy's raw (collapsed) stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [shorten(f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [f"py-spy: {total} samples at {PY_SPY_RATE} Hz (idle excluded)"]
    for title, table in (("inclusive", inclusive), ("self", own)):
        lines.append(f"  top {top} {title}:")
        for frame, n in table.most_common(top):
            lines.append(f"    {100 * n / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def shorten(frame: str) -> str:
    """'send (chatcore/messaging.py:40)' -> 'send (chatcore/messaging.py)': lines merged."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "python3.11/", "/work/main/", "/tmp/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


async def stop_py_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        await asyncio.to_thread(spy.wait, 30)


async def profile(args: argparse.Namespace, code_root: Path, label: str) -> dict[str, Any]:
    core = Core(code_root, args.database, label)
    try:
        await core.start()
        pairs = await make_pairs(core, args.pairs)
        sender = Sender(core, pairs)
        await saturate(sender, args.warmup, args.concurrency)
        spy = None
        if args.py_spy:
            assert core.process is not None
            pid, rate = str(core.process.pid), str(PY_SPY_RATE)
            command = ["py-spy", "record", "--pid", pid, "--rate", rate, "--format", "raw"]
            spy = subprocess.Popen(
                [*command, "--nonblocking", "--output", args.py_spy],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)  # py-spy attaches
        if args.py_spy_phase == "saturation":
            sat = await saturate(sender, args.messages, args.concurrency)
            await stop_py_spy(spy)
            rated = await fixed_rate(sender, args.rate, args.duration)
        else:
            rated = await fixed_rate(sender, args.rate, args.duration)
            await stop_py_spy(spy)
            sat = await saturate(sender, args.messages, args.concurrency)
        result = {"label": label, "saturation": sat.summary(), "fixed_rate": rated.summary()}
        if spy is not None:
            result["py_spy"] = summarize_py_spy(Path(args.py_spy), args.top)
        return result
    finally:
        await core.stop()


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("sends/s at saturation", "saturation", "sends_per_s"),
        ("chatcore CPU ms/send (sat.)", "saturation", "core_cpu_ms"),
        ("  of which system (sat.)", "saturation", "core_sys_ms"),
        ("postgres CPU ms/send (sat.)", "saturation", "pg_cpu_ms"),
        ("redis CPU ms/send (sat.)", "saturation", "redis_cpu_ms"),
        ("SQL statements/send", "saturation", "statements"),
        ("BEGINs/send", "saturation", "begins"),
        ("statements prepared/send", "saturation", "prepares"),
        ("COMMITs/send", "saturation", "commits"),
        ("send call p50 ms (sat.)", "saturation", "p50_ms"),
        ("errors (sat.)", "saturation", "errors"),
        (f"chatcore CPU ms/send @{args.rate:g}/s", "fixed_rate", "core_cpu_ms"),
        ("  of which system (rate)", "fixed_rate", "core_sys_ms"),
        (f"SQL statements/send @{args.rate:g}/s", "fixed_rate", "statements"),
        (f"COMMITs/send @{args.rate:g}/s", "fixed_rate", "commits"),
        (f"send call p50 ms @{args.rate:g}/s", "fixed_rate", "p50_ms"),
        (f"send call p95 ms @{args.rate:g}/s", "fixed_rate", "p95_ms"),
        (f"send call p99 ms @{args.rate:g}/s", "fixed_rate", "p99_ms"),
        (f"achieved/s @{args.rate:g}/s", "fixed_rate", "sends_per_s"),
        ("errors (rate)", "fixed_rate", "errors"),
    ]
    head = f"{'':32}" + "".join(f"{r['label']:>14}" for r in results)
    lines = [
        f"profile_send: {args.database}, {args.pairs} pairs, {args.messages} sends at "
        f"concurrency {args.concurrency}, then {args.rate:g}/s for {args.duration:g}s",
        head,
    ]
    for title, phase, key in rows:
        lines.append(f"{title:32}" + "".join(f"{r[phase][key]:>14}" for r in results))
    for r in results:
        lines.append(f"{r['label']}: statements by verb per send: {r['saturation']['by_verb']}")
    return "\n".join(lines)


async def drive(args: argparse.Namespace) -> None:
    variants = []
    if args.compare:
        variants.append((Path(args.compare).resolve(), "before"))
    variants.append((Path(__file__).resolve().parent.parent, "after" if args.compare else "now"))
    results = [await profile(args, root, label) for root, label in variants]
    print(report(results, args))
    for r in results:
        if "py_spy" in r:
            print(f"{r['label']}: {r['py_spy']}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--messages", type=int, default=3000, help="sends at saturation")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rate", type=float, default=200.0, help="sends/s of the fixed phase")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--compare", help="another checkout to measure first, as 'before'")
    parser.add_argument("--py-spy", help="write py-spy's raw samples of the saturation here")
    parser.add_argument(
        "--py-spy-phase",
        choices=("saturation", "rate"),
        default="saturation",
        help="which to sample",
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output", help="JSON results")
    args = parser.parse_args()
    if args.concurrency > args.pairs:
        parser.error("--concurrency must not exceed --pairs (a pair never races itself)")
    asyncio.run(drive(args))


if __name__ == "__main__":
    main()
