"""Cross-gateway delivery latency at a fixed send rate, with an exactly-once audit.

Senders POST to gateway 1; each receiver listens on gateway 2 (one long-poll re-issued
at once from the returned cursor, or one WebSocket). The message body carries the
moment its send started (time.perf_counter() of this process; the receivers run here
too, so both ends read the same clock). Latency is receive time minus that moment, so
it includes the sender's HTTP round trip to gateway 1, chatcore, the PostgreSQL commit,
Redis pub/sub, gateway 2 and the receiver's transport.

Every message must arrive exactly once and in order per pair; anything else is counted
and fails the run.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.api import User, connector, current_cursor
from bench.cluster import BenchError, Service, cpu_seconds_by_command, machine_busy_seconds
from bench.held import subscribed_channels, wait_for
from longtail.wire import Keys

SUBSCRIBE_DEADLINE = 10.0
DRAIN_DEADLINE = 10.0  # after the last send: time allowed for the stragglers to arrive
LINGER = 0.5  # once all arrived: keep listening briefly so a late duplicate is counted
SEND_TIMEOUT = aiohttp.ClientTimeout(total=10)
RECEIVE_POLL_TIMEOUT = 30  # seconds; a receiver's long-poll, re-issued when answered


@dataclass(frozen=True)
class Pair:
    index: int
    sender: User
    receiver: User


@dataclass
class Audit:
    """What was sent and what came back, per pair, and the delivery latencies.

    Each pair's first `warmup` messages are audited like the rest (lost, duplicated,
    out of order) but left out of the latency figures: they meet every cold path of a
    fresh deployment (first batches, each receiver's first catch-up), and the slowest
    messages of a window were all among its first, whichever system ran.
    """

    pairs: int
    warmup: int = 0
    sent: list[list[int]] = field(default_factory=list)
    last_seen: list[int] = field(default_factory=list)
    seen: list[set[int]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)
    send_errors: list[str] = field(default_factory=list)
    receive_errors: list[str] = field(default_factory=list)
    duplicated: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    seq_gaps: int = 0
    control_frames: int = 0
    scheduled: int = 0
    skipped: int = 0
    first_send: float = 0.0
    last_send: float = 0.0

    def __post_init__(self) -> None:
        self.sent = [[] for _ in range(self.pairs)]
        self.last_seen = [-1] * self.pairs
        self.seen = [set() for _ in range(self.pairs)]

    @property
    def sent_count(self) -> int:
        return sum(len(s) for s in self.sent)

    @property
    def received_count(self) -> int:
        return sum(len(s) for s in self.seen)

    def lost(self) -> int:
        return sum(len(set(sent) - seen) for sent, seen in zip(self.sent, self.seen, strict=True))

    def record_send(self, pair: int, number: int, started: float, answered: float) -> None:
        self.sent[pair].append(number)
        if number >= self.warmup:
            self.send_ms.append((answered - started) * 1000)
        self.first_send = self.first_send or started
        self.last_send = max(self.last_send, started)

    def record_event(self, event: dict[str, Any], received: float) -> None:
        parsed = self.parse(event)
        if parsed is None:
            self.unexpected += 1
            return
        pair, number, started = parsed
        if number in self.seen[pair]:
            self.duplicated += 1
            return
        if number < self.last_seen[pair]:
            self.out_of_order += 1
        self.last_seen[pair] = max(self.last_seen[pair], number)
        self.seen[pair].add(number)
        if number >= self.warmup:
            self.latencies_ms.append((received - started) * 1000)

    def parse(self, event: dict[str, Any]) -> tuple[int, int, float] | None:
        """(pair, number, send start) of one of our messages; None for anything else."""
        if event.get("type") != "message":
            return None
        try:
            pair, number, started = event["message"]["body"].split(":")
            parsed = int(pair), int(number), float(started)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return parsed if 0 <= parsed[0] < self.pairs else None

    def failures(self) -> int:
        return (
            self.lost()
            + self.duplicated
            + self.out_of_order
            + self.unexpected
            + self.seq_gaps
            + len(self.send_errors)
            + len(self.receive_errors)
        )

    def summary(self) -> dict[str, Any]:
        span = self.last_send - self.first_send
        return {
            "scheduled": self.scheduled,
            "skipped_behind_schedule": self.skipped,
            "sent": self.sent_count,
            "received": self.received_count,
            "achieved_rate_per_s": round((self.sent_count - 1) / span, 1) if span > 0 else None,
            "warmup_per_pair": self.warmup,
            **percentiles(self.latencies_ms),
            "send_round_trip": percentiles(self.send_ms),
            "lost": self.lost(),
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "unexpected": self.unexpected,
            "seq_gaps": self.seq_gaps,
            "control_frames": self.control_frames,
            "send_errors": self.send_errors[:10],
            "send_error_count": len(self.send_errors),
            "receive_errors": self.receive_errors[:10],
        }


def make_body(pair: int, number: int, started: float) -> str:
    return f"{pair}:{number}:{started!r}"


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 by the nearest-rank method, plus the maximum, in ms."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(values)

    def rank(p: int) -> float:
        return round(ordered[max(0, -(-len(ordered) * p // 100) - 1)], 3)

    return {
        "p50_ms": rank(50),
        "p95_ms": rank(95),
        "p99_ms": rank(99),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


class SeqCheck:
    """A receiver's events must carry seq cursor+1, cursor+2... (the delivery contract)."""

    def __init__(self, cursor: int, audit: Audit) -> None:
        self.cursor = cursor
        self.audit = audit

    def accept(self, event: dict[str, Any]) -> None:
        if "seq" not in event:
            return  # ephemeral (presence, typing): no place in the sequence
        seq = int(event["seq"])
        if seq != self.cursor + 1:
            self.audit.seq_gaps += 1
        self.cursor = max(self.cursor, seq)


Receiver = Callable[
    [aiohttp.ClientSession, Service, User, int, Audit, asyncio.Event],
    Coroutine[Any, Any, None],
]


async def receive_longpoll(
    http: aiohttp.ClientSession,
    gateway: Service,
    user: User,
    cursor: int,
    audit: Audit,
    listening: asyncio.Event,
) -> None:
    """One outstanding long-poll, re-issued at once from the cursor it returns."""
    check = SeqCheck(cursor, audit)
    timeout = aiohttp.ClientTimeout(total=RECEIVE_POLL_TIMEOUT + 10)
    listening.set()
    while True:
        url = f"{gateway.url}/api/events?cursor={cursor}&timeout={RECEIVE_POLL_TIMEOUT}"
        async with http.get(url, headers=user.auth, timeout=timeout) as resp:
            text = await resp.read()
            received = time.perf_counter()
            if resp.status != 200:
                audit.receive_errors.append(f"long-poll -> {resp.status}: {text[:200]!r}")
                await asyncio.sleep(0.1)
                continue
        answer = json.loads(text)
        for event in answer["events"]:
            if "seq" not in event:
                audit.control_frames += 1  # ephemeral: presence, typing
                continue
            check.accept(event)
            audit.record_event(event, received)
        cursor = int(answer["cursor"])


async def receive_websocket(
    http: aiohttp.ClientSession,
    gateway: Service,
    user: User,
    cursor: int,
    audit: Audit,
    listening: asyncio.Event,
) -> None:
    """One WebSocket from the cursor; every text frame with a seq is one event."""
    check = SeqCheck(cursor, audit)
    headers = {**user.auth, "Origin": gateway.url}
    async with http.ws_connect(
        f"{gateway.url}/api/events/ws?cursor={cursor}",
        headers=headers,
        timeout=aiohttp.ClientWSTimeout(ws_close=5),
    ) as ws:
        listening.set()
        async for frame in ws:
            received = time.perf_counter()
            if frame.type != aiohttp.WSMsgType.TEXT:
                audit.receive_errors.append(f"websocket frame {frame.type!r}: {frame.data!r}")
                return
            event = json.loads(frame.data)
            if "seq" not in event:
                audit.control_frames += 1  # `ready`, `heartbeat`: no event, no seq
                continue
            check.accept(event)
            audit.record_event(event, received)
        audit.receive_errors.append(f"websocket closed: {ws.close_code} {ws.exception()!r}")


async def send_pair(
    http: aiohttp.ClientSession,
    gateway: Service,
    pair: Pair,
    audit: Audit,
    slots: list[float],
    window_end: float,
) -> None:
    """This pair's messages, one after the other, each at its slot in the schedule.

    Sequential per pair, so 'in order' has a meaning. A send that overruns its slot
    delays the next one; slots that only come up after the window are skipped (and
    counted), so the run stays bounded and the achieved rate tells the truth.
    """
    url = f"{gateway.url}/api/messages"
    for number, slot in enumerate(slots):
        delay = slot - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.perf_counter()
        if started > window_end:
            audit.skipped += len(slots) - number
            return
        body = {
            "to": pair.receiver.id,
            "body": make_body(pair.index, number, started),
            "client_id": f"bench-{pair.index}-{number}-{started!r}",
        }
        try:
            async with http.post(
                url, json=body, headers=pair.sender.auth, timeout=SEND_TIMEOUT
            ) as resp:
                await resp.read()
                if resp.status != 201:
                    audit.send_errors.append(f"POST /api/messages -> {resp.status}")
                    continue
        except (TimeoutError, aiohttp.ClientError) as exc:
            audit.send_errors.append(f"POST /api/messages: {exc!r}")
            continue
        audit.record_send(pair.index, number, started, time.perf_counter())


@dataclass
class LatencyRun:
    transport: str
    rate: float
    duration: float
    pairs: int
    summary: dict[str, Any]
    cpu_ms_per_message: dict[str, float]
    failures: int


async def measure_latency(
    transport: str,
    receiver: Receiver,
    sender_gw: Service,
    receiver_gw: Service,
    chatcore: Service,
    pairs: list[Pair],
    *,
    rate: float,
    duration: float,
    redis: Redis,
    keys: Keys,
) -> LatencyRun:
    """Listen on receiver_gw, send at `rate` msg/s for `duration` s on sender_gw, audit."""
    audit = Audit(len(pairs))
    async with aiohttp.ClientSession(connector=connector()) as http:
        cursors = [await current_cursor(http, receiver_gw.url, p.receiver) for p in pairs]
        listening = [asyncio.Event() for _ in pairs]
        receivers = [
            asyncio.create_task(receiver(http, receiver_gw, p.receiver, cursor, audit, ev))
            for p, cursor, ev in zip(pairs, cursors, listening, strict=True)
        ]
        try:
            await listen_ready(receivers, listening, pairs, redis, keys)
            cpu_before = cpu_seconds(sender_gw, receiver_gw, chatcore)
            await send_all(http, sender_gw, pairs, audit, rate, duration)
            await drain(audit, receivers)
            cpu_after = cpu_seconds(sender_gw, receiver_gw, chatcore)
            cpu = cpu_ms_per_message(cpu_before, cpu_after, audit.received_count)
        finally:
            for task in receivers:
                task.cancel()
            outcomes = await asyncio.gather(*receivers, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            audit.receive_errors.append(f"receiver failed: {outcome!r}")
    return LatencyRun(
        transport,
        rate,
        duration,
        len(pairs),
        audit.summary(),
        cpu,
        audit.failures(),
    )


def cpu_seconds(*services: Service) -> dict[str, float]:
    """CPU time used so far by each service, the shared servers (every PostgreSQL
    process on the machine, Redis), this load process, and the whole machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    shared = cpu_seconds_by_command(("postgres", "redis-server"))
    return {
        **{s.name: s.cpu_seconds() for s in services},
        "postgres": shared["postgres"],
        "redis": shared["redis-server"],
        "bench": usage.ru_utime + usage.ru_stime,
        "machine": machine_busy_seconds(),
    }


def cpu_ms_per_message(
    before: dict[str, float], after: dict[str, float], messages: int
) -> dict[str, float]:
    """Each one's CPU per delivered message; 'other' is what the rest of the machine
    used meanwhile (other people's work on a shared box shows up there)."""
    per_message = {
        name: (after[name] - start) * 1000 / max(1, messages) for name, start in before.items()
    }
    machine = per_message.pop("machine")
    per_message["other"] = max(0.0, machine - sum(per_message.values()))
    return {name: round(ms, 3) for name, ms in per_message.items()}


async def listen_ready(
    receivers: list[asyncio.Task[None]],
    listening: list[asyncio.Event],
    pairs: list[Pair],
    redis: Redis,
    keys: Keys,
) -> None:
    """Every receiver connected and its user's channel subscribed on the gateway."""
    channels = [keys.channel(p.receiver.id) for p in pairs]

    async def ready() -> bool:
        for task in receivers:
            if task.done():
                task.result()  # a receiver that died already: raise its error
        return all(ev.is_set() for ev in listening) and await subscribed_channels(
            redis, channels
        ) == len(channels)

    await wait_for("receivers to listen", ready, SUBSCRIBE_DEADLINE)


async def send_all(
    http: aiohttp.ClientSession,
    gateway: Service,
    pairs: list[Pair],
    audit: Audit,
    rate: float,
    duration: float,
) -> None:
    """rate msg/s in total, round-robin over the pairs, for `duration` seconds."""
    start = time.perf_counter() + 0.05
    total = max(1, round(rate * duration))
    slots: list[list[float]] = [[] for _ in pairs]
    for i in range(total):
        slots[i % len(pairs)].append(start + i / rate)
    window_end = start + duration
    audit.scheduled = total
    await asyncio.gather(
        *(send_pair(http, gateway, pair, audit, slots[pair.index], window_end) for pair in pairs)
    )


async def drain(audit: Audit, receivers: list[asyncio.Task[Any]]) -> None:
    """Wait until everything sent arrived (or a receiver died, or the deadline), then
    linger so that a late duplicate is still counted."""

    async def delivered() -> bool:
        if any(task.done() for task in receivers):
            return True
        return audit.received_count >= audit.sent_count

    try:
        await wait_for("every message to arrive", delivered, DRAIN_DEADLINE)
    except BenchError:
        return  # the audit counts what is missing
    await asyncio.sleep(LINGER)
