"""Ops drain a gateway behind nginx under load: every client moves, nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest

from tests.client import Client
from tests.e2e.cluster import Cluster, Proc
from tests.e2e.nginx import Nginx
from tests.streams import read_stream

pytestmark = pytest.mark.e2e

DRAIN_SECONDS = 4.0
CLIENTS = 6
MESSAGES = 45
# One sender writes to every client quickly: above the default per-user send rate.
CLUSTER_ENV = {"LONGTAIL_DRAIN_SECONDS": str(DRAIN_SECONDS), "LONGTAIL_SENDS_PER_MINUTE": "10000"}


async def exit_time(proc: Proc, since: float) -> tuple[int, float]:
    """The process's exit code and how long after `since` it exited."""
    code = await asyncio.to_thread(proc.popen.wait)  # type: ignore[union-attr]
    return code, asyncio.get_running_loop().time() - since


async def long_poller(client: Client, until: int, stop: asyncio.Event, gaps: list[float]) -> None:
    """Polls through nginx like a browser: on an error, retries at once from its cursor."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while len([s for s in client.seen]) < until and not stop.is_set():
        try:
            events = await client.poll(timeout=5)
        except Exception:
            await asyncio.sleep(0.05)
            continue
        now = loop.time()
        if events:
            gaps.append(now - last)
            last = now


async def sse_reader(
    http, url: str, client: Client, until: int, stop: asyncio.Event, got: list[dict]
) -> None:
    """An SSE client that reconnects with its last seq, as EventSource does."""
    while len(got) < until and not stop.is_set():
        cursor = got[-1]["seq"] if got else client.cursor
        try:
            stream = await read_stream(
                http,
                url + f"/api/events/stream?cursor={cursor}",
                client.headers(),
                "sse",
                lambda r: len(got) + len(r.events) >= until,
                deadline=30,
            )
            got.extend(stream.events)
        except Exception:
            await asyncio.sleep(0.05)


async def test_sigterm_moves_every_client_to_the_other_gateways_with_nothing_lost(
    http, cluster: Cluster, nginx: Nginx
):
    sender = await Client(http, nginx.url).signup(f"sender{uuid.uuid4().hex[:6]}")
    pollers, streamers = [], []
    for i in range(CLIENTS):
        reader = await Client(http, nginx.url).signup(f"reader{i}{uuid.uuid4().hex[:6]}")
        await sender.befriend(reader)
        reader.cursor = 2
        (pollers if i % 2 else streamers).append(reader)

    stop = asyncio.Event()
    gaps: list[float] = []
    sse_got: dict[int, list[dict]] = {c.user_id: [] for c in streamers}
    readers = [asyncio.create_task(long_poller(c, MESSAGES, stop, gaps)) for c in pollers]
    readers += [
        asyncio.create_task(sse_reader(http, nginx.url, c, MESSAGES, stop, sse_got[c.user_id]))
        for c in streamers
    ]
    victim = cluster.gateways[1]
    loop = asyncio.get_running_loop()
    try:
        for i in range(MESSAGES):
            for reader in pollers + streamers:
                for _attempt in range(20):  # a client retries a failed send, same client_id
                    resp = await sender.send(reader, f"m{i}", client_id=f"{reader.user_id}-{i}")
                    if resp.status in (200, 201):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"send m{i} never succeeded: {resp.status} {resp.body}")
            if i == MESSAGES // 3:
                assert victim.popen is not None
                victim.popen.send_signal(signal.SIGTERM)
                exited = asyncio.create_task(exit_time(victim, loop.time()))
            await asyncio.sleep(0.03)
        code, drain_took = await asyncio.wait_for(exited, DRAIN_SECONDS + 5)
        assert code == 0
        await asyncio.wait_for(asyncio.gather(*readers), 30)
    finally:
        stop.set()
        for task in readers:
            task.cancel()
        await cluster.restart(victim)

    expected = [f"m{i}" for i in range(MESSAGES)]
    for client in pollers:
        assert len(client.seen) == len(set(client.seen)), "no duplicates"
        assert client.seen == sorted(client.seen), "in order"
        assert len(client.seen) == MESSAGES
    for got in sse_got.values():
        assert [e["message"]["body"] for e in got] == expected
    assert drain_took < DRAIN_SECONDS + 2
    assert max(gaps) < DRAIN_SECONDS, "no client waited longer than the drain window"
