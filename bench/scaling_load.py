"""The deployment and the load of `bench.scaling`.

- `ScalingCluster`: chatcore on a throw-away database, and 1..N gateways started and
  stopped per configuration, on the Redis under test.
- `Publisher`: events written straight into Redis exactly as chatcore's outbox writes
  them (chatcore/outbox.py, `queue`: per event ZADD, ZREMRANGEBYRANK and EXPIRE on the
  user's hot buffer, SET head, SPUBLISH on the user's channel, in scripts, in one
  pipeline per batch), at a fixed rate from this process, so chatcore and the database
  are not what is measured. Each receiver's seq goes up by one from its cursor, so the
  gateways' cursor logic takes every event as the next one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.asyncio import Redis

from bench.api import User
from bench.cluster import STOP_GRACE, Cluster, Service, free_port, wait_ready
from bench.latency import Audit, make_body
from chatcore.eventlog import Delivery
from chatcore.outbox import queue
from longtail.settings import Settings
from longtail.wire import Event, Keys

# Most events in one pipeline: a publisher that fell behind catches up in bounded steps.
MAX_BATCH = 500
# Past the window, a publisher still behind stops; what it did not send is counted.
LATE_GRACE = 1.0
# One pipeline per tick with whatever is due, as chatcore's outbox sends one pipeline
# per committed batch (a group commit's worth of events); at 2,000 events/s, about 10
# events per pipeline. Without it the bench's own pipeline overhead caps the rate.
TICK = 0.005


@dataclass
class ScalingCluster(Cluster):
    """bench.cluster.Cluster on a database of the run's own, gateways per configuration."""

    database_url: str = ""
    retired: list[Service] = field(default_factory=list)

    def env(self, port: int, chatcore_port: int) -> dict[str, str]:
        return {
            **super().env(port, chatcore_port),
            "DATABASE_URL": self.database_url,
            # Nothing to hand over when a configuration's gateways stop: no waiting.
            "LONGTAIL_DRAIN_SECONDS": "1",
            "LONGTAIL_DRAIN_SPREAD": "0",
        }

    async def start_core(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        core_port = free_port()
        await self.migrate(self.env(core_port, core_port))
        self.add("chatcore", core_port, ["chatcore", "--port", str(core_port)], core_port)
        await wait_ready(self.chatcore, "/internal/health")

    async def start_gateways(self, count: int, label: str) -> list[Service]:
        for i in range(1, count + 1):
            port = free_port()
            self.add(
                f"{label}-gateway{i}", port, ["gateway", "--port", str(port)], self.chatcore.port
            )
        for gateway in self.gateways:
            await wait_ready(gateway, "/readyz")
        return self.gateways

    async def stop_gateways(self) -> None:
        """SIGTERM this configuration's gateways, SIGKILL after the grace."""
        gateways, self.services = self.gateways, self.services[:1]
        for gateway in gateways:
            with suppress(ProcessLookupError):
                gateway.process.send_signal(signal.SIGTERM)
        for gateway in gateways:
            try:
                await asyncio.to_thread(gateway.process.wait, STOP_GRACE)
            except subprocess.TimeoutExpired:
                gateway.process.kill()
                await asyncio.to_thread(gateway.process.wait, STOP_GRACE)
        self.retired += gateways

    def all_services(self) -> list[Service]:
        return self.services + self.retired

    def unclean_exits(self) -> list[str]:
        return [
            f"{s.name} exited with {s.process.returncode}"
            for s in self.all_services()
            if s.process.returncode != 0
        ]

    def log_problems(self) -> dict[str, list[dict[str, object]]]:
        return {s.name: p for s in self.all_services() if (p := s.log_problems())}


def event_json(seq: int, user: User, index: int, number: int, started: float) -> bytes:
    """A message event as chatcore encodes one (chatcore/eventlog.encode, the message
    shape of chatcore/messaging.message_dict); its body is what bench.latency's Audit
    reads back: receiver index, number, send start."""
    body = {
        "seq": seq,
        "type": "message",
        "message": {
            "id": seq,
            "conversation_id": user.id,
            "sender": {"id": user.id, "username": user.username},
            "body": make_body(index, number, started),
            "client_id": f"scaling-{index}-{number}",
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class PublishResult:
    scheduled: int
    published: int
    seconds: float
    batches: int
    per_owner: dict[int, int]

    @property
    def achieved_rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


class Publisher:
    """Events for `users`, round-robin, at a fixed rate, as chatcore's outbox writes them."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        users: list[User],
        heads: list[int],
        owner_of: list[int],
        audit: Audit,
    ) -> None:
        defaults = Settings()
        self._redis = redis
        self._keys = keys
        self._users = users
        self.heads = heads  # each user's last published seq
        self._numbers = [0] * len(users)  # each user's events this configuration, for Audit
        self._owner_of = owner_of  # the primary (port) carrying each user's channel
        self._audit = audit
        self._buffer_size = defaults.buffer_size
        self._buffer_ttl = defaults.buffer_ttl
        self._next_user = 0

    async def run(self, rate: float, duration: float) -> PublishResult:
        total = max(1, round(rate * duration))
        start = time.perf_counter()
        deadline = start + duration + LATE_GRACE
        published = batches = 0
        per_owner: dict[int, int] = {}
        while published < total:
            now = time.perf_counter()
            if now > deadline:
                break
            due = min(total, int((now - start) * rate) + 1)
            if due <= published:
                await asyncio.sleep(start + published / rate - now)
                continue
            count = min(MAX_BATCH, due - published)
            await self._publish(count, per_owner)
            published += count
            batches += 1
            await asyncio.sleep(max(0.0, now + TICK - time.perf_counter()))
        return PublishResult(total, published, time.perf_counter() - start, batches, per_owner)

    async def _publish(self, count: int, per_owner: dict[int, int]) -> None:
        started = time.perf_counter()
        pipe = self._redis.pipeline(transaction=False)
        sent: list[tuple[int, int]] = []
        deliveries: list[Delivery] = []
        for _ in range(count):
            index = self._next_user
            self._next_user = (index + 1) % len(self._users)
            user = self._users[index]
            seq = self.heads[index] + 1
            number = self._numbers[index]
            event = Event(seq, event_json(seq, user, index, number, started))
            deliveries.append(Delivery(user.id, event))
            self.heads[index] = seq
            self._numbers[index] = number + 1
            owner = self._owner_of[index]
            per_owner[owner] = per_owner.get(owner, 0) + 1
            sent.append((index, number))
        # What chatcore.outbox.Publisher.publish sends for a batch.
        queue(pipe, self._keys, deliveries, self._buffer_size, self._buffer_ttl, time.time())
        await pipe.execute()
        answered = time.perf_counter()
        for index, number in sent:
            self._audit.record_send(index, number, started, answered)
