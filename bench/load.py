"""Load shapes that do not care which system they drive: a fixed rate, a closed loop,
and one message to a room at a time (fan-out). `bench.compare` runs each of them against
Longtail and python-socketio through the same code, so only the transport differs.

A system is reached through a `Send`: send this body for this pair (or to the room) and
return once the server answered. The receivers record into the same `Audit` as
`bench.latency` (bodies `pair:number:send-start`, exactly-once and order per pair).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from bench.cluster import BenchError, Service
from bench.held import wait_for
from bench.latency import (
    LINGER,
    Audit,
    cpu_ms_per_message,
    cpu_seconds,
    drain,
    make_body,
    percentiles,
)

# pair index, body -> returns when the server answered; raises SendFailed otherwise.
Send = Callable[[int, str], Awaitable[None]]
DRAIN_DEADLINE = 15.0  # after the last send: time allowed for the stragglers to arrive
FANOUT_DEADLINE = 10.0  # one fan-out message: time allowed to reach every member


class SendFailed(Exception):
    """The server refused or did not answer a send (counted, never retried)."""


# Messages per pair that warm a latency window up (bench.latency.Audit.warmup): the first
# two of each pair held the window's slowest, on either system.
WARMUP = 2


class TimedAudit(Audit):
    """An Audit that also knows when the last event arrived (the end of a throughput
    window) and, for fan-out, how many members got each message and when the last did."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.last_received = 0.0
        self.arrivals: dict[int, list[float]] = {}
        self.complete: dict[int, asyncio.Event] = {}
        self.unexpected_samples: list[str] = []

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "unexpected_samples": self.unexpected_samples}

    def record_event(self, event: dict[str, Any], received: float) -> None:
        before = self.received_count
        super().record_event(event, received)
        if self.received_count == before:
            if self.parse(event) is None and len(self.unexpected_samples) < 5:
                self.unexpected_samples.append(repr(event)[:300])
            return  # a duplicate or a foreign event: counted by the Audit
        self.last_received = max(self.last_received, received)
        parsed = self.parse(event)
        if parsed is not None:
            _, number, _ = parsed
            self.arrivals.setdefault(number, []).append(received)
            if len(self.arrivals[number]) >= self.pairs and number in self.complete:
                self.complete[number].set()


async def attempt(send: Send, pair: int, number: int, audit: Audit) -> None:
    """One send, timed from just before it starts; failures are counted, not raised."""
    started = time.perf_counter()
    try:
        await send(pair, make_body(pair, number, started))
    except SendFailed as exc:
        audit.send_errors.append(str(exc))
        return
    audit.record_send(pair, number, started, time.perf_counter())


async def send_paced(send: Send, pairs: int, audit: Audit, rate: float, duration: float) -> None:
    """`rate` msg/s in total, round-robin over the pairs, for `duration` seconds.

    The schedule of bench.latency.send_all: message i is due at start + i/rate; each pair
    sends sequentially (so order has a meaning), an overrun delays that pair's next send,
    and slots that only come up after the window are skipped and counted.
    """
    start = time.perf_counter() + 0.05
    total = max(1, round(rate * duration))
    window_end = start + duration
    audit.scheduled = total

    async def pair_loop(pair: int) -> None:
        slots = [start + i / rate for i in range(pair, total, pairs)]
        for number, slot in enumerate(slots):
            delay = slot - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() > window_end:
                audit.skipped += len(slots) - number
                return
            await attempt(send, pair, number, audit)

    await asyncio.gather(*(pair_loop(p) for p in range(pairs)))


async def send_closed_loop(send: Send, pairs: int, audit: Audit, duration: float) -> float:
    """Every pair sends its next message as soon as the previous one was answered, until
    `duration` has passed; returns when the sending started (perf_counter)."""
    start = time.perf_counter()
    window_end = start + duration

    async def pair_loop(pair: int) -> None:
        number = 0
        while time.perf_counter() < window_end:
            await attempt(send, pair, number, audit)
            number += 1

    await asyncio.gather(*(pair_loop(p) for p in range(pairs)))
    audit.scheduled = audit.sent_count + len(audit.send_errors)
    return start


@dataclass
class FanoutResult:
    members: int
    repeats: int
    # Per message: send start -> the last of the members received it.
    all_members_ms: list[float]
    # Per message: send start -> the first member received it.
    first_member_ms: list[float]
    summary: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "repeats": self.repeats,
            "all_members": {
                **percentiles(self.all_members_ms),
                "median_ms": median(self.all_members_ms),
            },
            "first_member": {
                **percentiles(self.first_member_ms),
                "median_ms": median(self.first_member_ms),
            },
            "audit": self.summary,
        }


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


async def fan_out(
    send: Callable[[str], Awaitable[None]],
    audit: TimedAudit,
    repeats: int,
    receivers: list[asyncio.Task[Any]],
) -> FanoutResult:
    """`repeats` messages to the room, one at a time: each is sent once the previous one
    reached every member (or its deadline passed). The receivers record each member's
    copy under that member's index (audit.pairs = the number of members)."""
    all_ms: list[float] = []
    first_ms: list[float] = []
    for number in range(repeats):
        audit.complete[number] = asyncio.Event()
        started = time.perf_counter()
        try:
            await send(f"{number}:{started!r}")
        except SendFailed as exc:
            audit.send_errors.append(str(exc))
            continue
        for member in range(audit.pairs):
            audit.sent[member].append(number)

        async def everyone(n: int = number) -> bool:
            for task in receivers:
                if task.done():
                    task.result()  # a receiver that died: raise its error
            return audit.complete[n].is_set()

        # On a timeout the audit counts the members it did not reach.
        with suppress(BenchError):
            await wait_for(f"fan-out message {number} to all", everyone, FANOUT_DEADLINE)
        arrivals = audit.arrivals.get(number, [])
        if len(arrivals) >= audit.pairs:
            all_ms.append((max(arrivals) - started) * 1000)
        if arrivals:
            first_ms.append((min(arrivals) - started) * 1000)
    await asyncio.sleep(LINGER)
    return FanoutResult(audit.pairs, repeats, all_ms, first_ms, audit.summary())


class MemberAudit:
    """What one fan-out member's Longtail receiver (bench.latency.receive_*) records into:
    the room's body `number:send-start` becomes this member's `member:number:send-start`
    in the shared audit; counters and error lists are the shared audit's."""

    def __init__(self, audit: TimedAudit, member: int) -> None:
        self.audit = audit
        self.member = member

    def record_event(self, event: dict[str, Any], received: float) -> None:
        self.audit.record_event(as_member(event, self.member), received)

    @property
    def seq_gaps(self) -> int:
        return self.audit.seq_gaps

    @seq_gaps.setter
    def seq_gaps(self, value: int) -> None:
        self.audit.seq_gaps = value

    @property
    def control_frames(self) -> int:
        return self.audit.control_frames

    @control_frames.setter
    def control_frames(self, value: int) -> None:
        self.audit.control_frames = value

    @property
    def receive_errors(self) -> list[str]:
        return self.audit.receive_errors


def as_member(event: dict[str, Any], member: int) -> dict[str, Any]:
    """A fan-out event relabelled as member's copy (anything else passes unchanged and
    is counted as unexpected)."""
    try:
        body = event["message"]["body"]
    except (KeyError, TypeError):
        return event
    if not isinstance(body, str):
        return event
    return {**event, "message": {**event["message"], "body": f"{member}:{body}"}}


async def drive(
    send: Send,
    pairs: int,
    audit: TimedAudit,
    receivers: list[asyncio.Task[Any]],
    servers: list[Service],
    *,
    duration: float,
    rate: float | None = None,
) -> dict[str, Any]:
    """Send at `rate` msg/s (paced) or as fast as answers come (closed loop, rate None),
    wait for delivery, and account the servers' CPU over the window."""
    before = cpu_seconds(*servers)
    if rate is not None:
        await send_paced(send, pairs, audit, rate, duration)
        start = audit.first_send
    else:
        start = await send_closed_loop(send, pairs, audit, duration)
    await drain(audit, receivers)
    after = cpu_seconds(*servers)
    cpu = cpu_ms_per_message(before, after, audit.received_count)
    span = audit.last_received - start
    return {
        "pairs": pairs,
        "rate": rate,
        "duration": duration,
        "delivered_per_s": round(audit.received_count / span, 1) if span > 0 else None,
        "server_cpu_ms_per_event": round(sum(cpu[s.name] for s in servers), 3),
        "cpu_ms_per_event": cpu,
        "summary": audit.summary(),
        "failures": audit.failures(),
    }
