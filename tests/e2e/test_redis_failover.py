"""Redis loses a primary during traffic: nothing lost, nothing duplicated.

Each test starts its own topology (a 3-primary / 3-replica Cluster, or a primary with a
replica and three Sentinels), chatcore and three gateway processes on it, and pairs of
users chatting across gateways. Mid-way the primary carrying the first receiver's
channel is SIGKILLed. The test then shows the replica promoted, every gateway
subscribed again (an SSE stream held on each gateway since before the kill receives a
message sent after it) and every message delivered once, in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from redis.crc import key_slot

from bench.redis_servers import (
    Topology,
    TopologyError,
    redis_cli,
    start_cluster,
    start_sentinel,
    wait_until,
)
from longtail.settings import LOAD_TEST_LIMITS
from longtail.wire import Keys
from tests.client import Client
from tests.e2e.cluster import Cluster, base_env
from tests.e2e.traffic import receive, send_all
from tests.streams import Received, read_stream

pytestmark = pytest.mark.e2e

PAIRS = 6
MESSAGES = 60  # per pair
SEND_GAP = 0.03
PROMOTION_DEADLINE = 30.0


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    start = start_cluster if request.param == "cluster" else start_sentinel
    topo = start(tmp_path / "redis")
    try:
        yield topo
    finally:
        topo.stop()


@pytest.fixture
def cluster_only(tmp_path: Path) -> Iterator[Topology]:
    topo = start_cluster(tmp_path / "redis")
    try:
        yield topo
    finally:
        topo.stop()


@pytest.fixture
async def gateways(
    topology: Topology, e2e_database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, str]]:
    async with running(topology, e2e_database_url, tmp_path) as procs:
        yield procs


@pytest.fixture
async def cluster_gateways(
    cluster_only: Topology, e2e_database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, str]]:
    async with running(cluster_only, e2e_database_url, tmp_path) as procs:
        yield procs


@asynccontextmanager
async def running(
    topology: Topology, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, str]]:
    """chatcore and three gateways on the topology; yields them and their key prefix."""
    prefix = f"fo{uuid.uuid4().hex[:8]}"
    env = base_env(topology.url, database_url, prefix)
    env.update(LOAD_TEST_LIMITS)
    env.update(
        {
            "LONGTAIL_REDIS_PING_INTERVAL": "1",
            "LONGTAIL_UNSUBSCRIBE_GRACE": "2",
            # This test is about re-subscribing, not about handing clients away.
            "LONGTAIL_REDIS_LOST_DRAIN_AFTER": "120",
            # The hub's reconnects and re-subscriptions, for a failure's message.
            "LONGTAIL_LOG_LEVEL": "INFO",
        }
    )
    procs = Cluster.build(tmp_path, env, gateways=3)
    try:
        await procs.start()
        yield procs, prefix
    finally:
        procs.stop()


# What a gateway's /metrics says about its subscriptions and catch-ups, for a failure.
HUB_METRICS = (
    "longtail_redis_subscriber_healthy",
    "longtail_redis_reconnects",
    "longtail_subscribed_channels",
    "longtail_catchup_reads",
    "longtail_held_connections",
    "longtail_events_delivered_total",
)


async def hub_metrics(http: aiohttp.ClientSession, base: str) -> str:
    try:
        async with http.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"(no /metrics: {exc!r})"
    return "\n".join(line for line in text.splitlines() if line.startswith(HUB_METRICS))


def owner_of(topology: Topology, channel: str) -> int:
    """The port of the primary that carries `channel` now."""
    if topology.kind == "sentinel":
        return topology.sentinel_primary()
    slot = key_slot(channel.encode())
    for port in topology.primaries():
        for line in redis_cli(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "myself" in fields[2] and "master" in fields[2]:
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return port
    raise TopologyError(f"no primary owns slot {slot}")


async def test_primary_killed_during_traffic_nothing_lost_or_duplicated(
    topology: Topology, gateways: tuple[Cluster, str], http: aiohttp.ClientSession
) -> None:
    procs, prefix = gateways
    urls = procs.urls
    senders, receivers = [], []
    for i in range(PAIRS):
        sender = await Client(http, urls[i % 3]).signup(f"s{uuid.uuid4().hex[:8]}")
        receiver = await Client(http, urls[(i + 1) % 3]).signup(f"r{uuid.uuid4().hex[:8]}")
        await sender.befriend(receiver)
        receiver.cursor = (await receiver.request("GET", "/api/events")).body["cursor"]
        senders.append(sender)
        receivers.append(receiver)

    # Streams held through the failover: their channel stays subscribed on each gateway,
    # so only the hub's own re-subscription can bring them what is sent after it.
    watcher = receivers[0]
    watching = [
        asyncio.create_task(
            read_stream(
                http,
                f"{url}/api/events/stream?cursor={watcher.cursor}",
                watcher.headers(),
                "sse",
                lambda got: any(
                    e.get("type") == "message" and e["message"]["body"] == "after"
                    for e in got.events
                ),
                deadline=120,
            )
        )
        for url in urls
    ]
    victim_port = owner_of(topology, Keys(prefix).channel(watcher.user_id))
    stop = asyncio.Event()
    receiving = [
        asyncio.create_task(receive(r, MESSAGES, bases=urls[i % 3 :] + urls[: i % 3], stop=stop))
        for i, r in enumerate(receivers)
    ]
    sending = [
        asyncio.create_task(send_all(s, r, f"p{i}", MESSAGES, gap=SEND_GAP, bases=urls))
        for i, (s, r) in enumerate(zip(senders, receivers, strict=True))
    ]

    await asyncio.sleep(MESSAGES * SEND_GAP / 3)
    topology.node(victim_port).kill()
    # The replica takes over: a different port now carries the receiver's channel.
    await asyncio.to_thread(
        wait_until,
        "a replica promoted",
        lambda: owner_of(topology, Keys(prefix).channel(receivers[0].user_id)) != victim_port,
        PROMOTION_DEADLINE,
    )

    try:
        await asyncio.wait_for(asyncio.gather(*sending), 90)
        results = await asyncio.wait_for(asyncio.gather(*receiving), 60)
    finally:
        stop.set()
    for i, bodies in enumerate(results):
        assert bodies == [f"p{i}:{n}" for n in range(MESSAGES)], f"pair {i}"

    # Every gateway hears the promoted primary: each stream gets a message sent now.
    sender = senders[0]
    assert all(not w.done() for w in watching), "a stream ended during the failover"
    for gateway in procs.gateways:  # each hears the new primary again (its backoff ends)
        await procs.wait_ready(gateway)
    assert (await sender.send(watcher, "after")).status == 201
    done, waiting = await asyncio.wait(watching, timeout=10)
    if waiting:  # which gateway's stream waits, and what it logged
        for stream in waiting:
            stream.cancel()
        await asyncio.wait(waiting)
        logs = "\n".join(
            [
                f"--- {g.name}\n{await hub_metrics(http, g.url)}\n{g.log_tail(60)}"
                for g in procs.gateways
            ]
        )
        raise AssertionError(f"streams done: {[w in done for w in watching]}\n{logs}")
    streams = [w.result() for w in watching]
    for n, got in enumerate(streams):
        bodies = [e["message"]["body"] for e in got.events if e.get("type") == "message"]
        assert bodies == [*(f"p0:{k}" for k in range(MESSAGES)), "after"], f"gateway {n + 1}"


def node_id(port: int) -> str:
    return redis_cli(port, "CLUSTER", "MYID")


def move_slot(topology: Topology, slot: int, source: int, target: int) -> None:
    """Reshard one slot by hand, keys included, as `redis-cli --cluster reshard` does."""
    source_id, target_id = node_id(source), node_id(target)
    redis_cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    redis_cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    while keys := redis_cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split():
        redis_cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
    for port in topology.primaries():
        redis_cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)


def has_message(body: str) -> Callable[[Received], bool]:
    return lambda got: any(
        e.get("type") == "message" and e["message"]["body"] == body for e in got.events
    )


async def test_slot_moved_under_held_streams_the_gateways_follow_it(
    cluster_only: Topology, cluster_gateways: tuple[Cluster, str], http: aiohttp.ClientSession
) -> None:
    """Resharding: the old owner drops the channel (-sunsubscribe); every gateway finds
    the new owner, subscribes there, and its held stream gets what is sent next."""
    procs, prefix = cluster_gateways
    urls = procs.urls
    alice = await Client(http, urls[0]).signup(f"a{uuid.uuid4().hex[:8]}")
    bob = await Client(http, urls[1]).signup(f"b{uuid.uuid4().hex[:8]}")
    await alice.befriend(bob)
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    streams = [
        asyncio.create_task(
            read_stream(
                http,
                f"{url}/api/events/stream?cursor={bob.cursor}",
                bob.headers(),
                "sse",
                has_message("after the move"),
                deadline=60,
            )
        )
        for url in urls
    ]
    first = asyncio.create_task(
        read_stream(
            http,
            f"{urls[2]}/api/events/stream?cursor={bob.cursor}",
            bob.headers(),
            "sse",
            has_message("before the move"),
            deadline=30,
        )
    )
    assert (await alice.send(bob, "before the move")).status == 201
    await asyncio.wait_for(first, 30)

    channel = Keys(prefix).channel(bob.user_id)
    slot = key_slot(channel.encode())
    source = owner_of(cluster_only, channel)
    # Every gateway holds the channel on its owner before the move.
    await asyncio.to_thread(
        wait_until,
        "three gateways subscribed",
        lambda: redis_cli(source, "PUBSUB", "SHARDNUMSUB", channel).split()[-1] == "3",
    )
    target = next(p for p in cluster_only.primaries() if p != source)
    await asyncio.to_thread(move_slot, cluster_only, slot, source, target)
    await asyncio.to_thread(
        wait_until, "the slot moved", lambda: owner_of(cluster_only, channel) == target
    )

    assert all(not s.done() for s in streams), "a stream ended during the move"
    assert (await alice.send(bob, "after the move")).status == 201
    for n, got in enumerate(await asyncio.wait_for(asyncio.gather(*streams), 30)):
        bodies = [e["message"]["body"] for e in got.events if e.get("type") == "message"]
        assert bodies == ["before the move", "after the move"], f"gateway {n + 1}"
