"""The Redis side of `bench.scaling`: throw-away servers, and what each one costs.

Every node is a `redis-server` this run started (bench/redis_servers), so its CPU time
in /proc is the bench's alone. Per node and per measuring window it records:

- CPU seconds (user + system, /proc/PID/stat);
- bytes it wrote to sockets (`wchar`, /proc/PID/io: with persistence off and logs at
  the default level, that is its network output: client replies, the replication
  stream and the Cluster bus together);
- `INFO stats` total_net_output_bytes (clients and replicas, not the Cluster bus);
- `CLUSTER INFO` cluster_stats_messages_publish*_sent/received: the bus messages that
  carry a PUBLISH (to every node) or an SPUBLISH (to the nodes of the owner's shard).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from bench.cluster import process_cpu_seconds
from bench.redis_servers import (
    HOST,
    Server,
    Topology,
    data_node_argv,
    free_port,
    redis_cli,
    start_cluster,
)

KINDS = ("single", "cluster")
BUS_COUNTERS = (
    "cluster_stats_messages_publish_sent",
    "cluster_stats_messages_publish_received",
    "cluster_stats_messages_publishshard_sent",
    "cluster_stats_messages_publishshard_received",
)
FANOUT_BATCH = 200  # publishes per pipeline in the fan-out comparison


def start_single(workdir: Path) -> Topology:
    """One redis-server on a free port (not the machine's 6379: its CPU is ours alone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = Server(port, data_node_argv(port, "--dir", str(workdir)))
    topo = Topology("single", str(workdir), url=f"redis://{HOST}:{port}/0")
    server.start(workdir)
    topo.nodes.append(server)
    return topo


def start_redis(kind: str, workdir: Path) -> Topology:
    """`single`, or `cluster`: 3 primaries with a replica each."""
    return start_single(workdir) if kind == "single" else start_cluster(workdir)


def roles(topo: Topology) -> dict[int, str]:
    """Port -> 'primary' or 'replica' (a single server is a primary)."""
    if topo.kind != "cluster":
        return {n.port: "primary" for n in topo.nodes}
    primaries = set(topo.primaries())
    return {n.port: "primary" if n.port in primaries else "replica" for n in topo.nodes}


def redis_version(topo: Topology) -> str:
    info = redis_cli(topo.nodes[0].port, "INFO", "server")
    return _fields(info).get("redis_version", "unknown")


@dataclass(frozen=True)
class NodeSample:
    cpu: float
    written: int
    net_output: int
    bus: dict[str, int]

    def minus(self, before: NodeSample) -> NodeSample:
        return NodeSample(
            self.cpu - before.cpu,
            self.written - before.written,
            self.net_output - before.net_output,
            {k: v - before.bus.get(k, 0) for k, v in self.bus.items()},
        )


def sample(topo: Topology) -> dict[int, NodeSample]:
    """Every node's counters now; CPU first, so the INFO calls fall outside it."""
    cpu = {n.port: process_cpu_seconds(n.pid) for n in topo.nodes}
    written = {n.port: _wchar(n.pid) for n in topo.nodes}
    out: dict[int, NodeSample] = {}
    for node in topo.nodes:
        stats = _fields(redis_cli(node.port, "INFO", "stats"))
        bus: dict[str, int] = {}
        if topo.kind == "cluster":
            info = _fields(redis_cli(node.port, "CLUSTER", "INFO"))
            bus = {k: int(info.get(k, 0)) for k in BUS_COUNTERS}
        out[node.port] = NodeSample(
            cpu[node.port], written[node.port], int(stats["total_net_output_bytes"]), bus
        )
    return out


def deltas(before: dict[int, NodeSample], after: dict[int, NodeSample]) -> dict[int, NodeSample]:
    return {port: after[port].minus(before[port]) for port in after}


def _wchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class Owners:
    """Which primary (port) owns a channel's slot, from a Cluster client's slot map."""

    def __init__(self, topo: Topology) -> None:
        self._topo = topo
        self._by_slot: dict[int, int] = {}

    async def load(self) -> None:
        if self._topo.kind != "cluster":
            return
        client = RedisCluster(startup_nodes=[ClusterNode(HOST, n.port) for n in self._topo.nodes])
        try:
            await client.initialize()
            for slot in range(16384):
                node = client.nodes_manager.get_node_from_slot(slot)
                self._by_slot[slot] = int(node.port)
        finally:
            await client.aclose()

    def of(self, channel: str) -> int:
        if self._topo.kind != "cluster":
            return self._topo.nodes[0].port
        return self._by_slot[key_slot(channel.encode())]


async def subscribed(topo: Topology, channels: list[str]) -> int:
    """How many of `channels` have a shard subscriber (PUBSUB SHARDNUMSUB, asked of
    every node: a node that does not own a channel answers 0 for it)."""
    total = 0
    for node in topo.nodes:
        client = Redis(host=HOST, port=node.port)
        try:
            for i in range(0, len(channels), 500):
                answer = await client.execute_command(
                    "PUBSUB", "SHARDNUMSUB", *channels[i : i + 500]
                )
                total += sum(1 for count in answer[1::2] if int(count) > 0)
        finally:
            await client.aclose()
    return total


async def fanout_comparison(
    topo: Topology, channels: list[str], payload: bytes, count: int
) -> dict[str, Any]:
    """`count` SPUBLISHes, then `count` classic PUBLISHes of the same payload, each sent
    to the primary owning the channel's slot, to channels nobody subscribes: what the
    Cluster itself does with one publish (bus messages, bytes, CPU), per node."""
    owners = Owners(topo)
    await owners.load()
    node_roles = roles(topo)
    clients = {port: Redis(host=HOST, port=port) for port in set(map(owners.of, channels))}
    out: dict[str, Any] = {"publishes": count, "payload_bytes": len(payload)}
    try:
        for command in ("spublish", "publish"):
            await asyncio.sleep(0.2)
            before = sample(topo)
            for start in range(0, count, FANOUT_BATCH):
                by_owner: dict[int, list[str]] = {}
                for i in range(start, min(count, start + FANOUT_BATCH)):
                    channel = channels[i % len(channels)]
                    by_owner.setdefault(owners.of(channel), []).append(channel)
                for port, names in by_owner.items():
                    pipe = clients[port].pipeline(transaction=False)
                    for name in names:
                        getattr(pipe, command)(name, payload)
                    await pipe.execute()
            await asyncio.sleep(0.5)  # bus messages are sent from the nodes' event loops
            delta = deltas(before, sample(topo))
            out[command] = fanout_figures(delta, node_roles, count)
    finally:
        for client in clients.values():
            await client.aclose()
    return out


def fanout_figures(
    delta: dict[int, NodeSample], node_roles: dict[int, str], count: int
) -> dict[str, Any]:
    nodes = {
        str(port): {
            "role": node_roles[port],
            "cpu_us_per_publish": round(d.cpu * 1e6 / count, 2),
            "bytes_written_per_publish": round(d.written / count, 1),
            "bus_messages_sent_per_publish": round(
                (
                    d.bus["cluster_stats_messages_publish_sent"]
                    + d.bus["cluster_stats_messages_publishshard_sent"]
                )
                / count,
                3,
            ),
        }
        for port, d in sorted(delta.items())
    }
    return {
        "nodes": nodes,
        "bus_messages_per_publish": round(
            sum(
                d.bus["cluster_stats_messages_publish_sent"]
                + d.bus["cluster_stats_messages_publishshard_sent"]
                for d in delta.values()
            )
            / count,
            3,
        ),
        "bytes_written_per_publish": round(sum(d.written for d in delta.values()) / count, 1),
        "cpu_us_per_publish": round(sum(d.cpu for d in delta.values()) * 1e6 / count, 2),
    }
