"""Where the hub subscribes: which Redis node carries a channel, and a pub/sub there.

Channels are sharded (SSUBSCRIBE/SPUBLISH, Redis 7): on one server or a Sentinel-named
primary that is a single shard; on a Redis Cluster each primary carries the channels
of its slots, so a gateway holds one subscriber connection per primary it needs, and
a publish travels only to the node that owns the channel, not to every node.
"""

from __future__ import annotations

from typing import Any, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from longtail.redisconn import cluster_client, parse_redis_url, primary_client


class TopologyUnknown(Exception):
    """The slot map does not say (yet) which node carries a channel."""


class Shards(Protocol):
    async def refresh(self) -> None:
        """Re-read which node owns what (after an error, a MOVED or a failover)."""

    def owner(self, channel: bytes) -> str:
        """The name of the shard carrying `channel`; TopologyUnknown if not known."""

    def pubsub(self, shard: str) -> PubSub:
        """A new, not yet connected pub/sub on that shard."""

    async def publish(self, channel: bytes, message: bytes) -> None:
        """A classic (broadcast) PUBLISH: it reaches every shard, as the watchdog needs."""

    async def aclose(self) -> None: ...


class SingleShard:
    """One server, or the primary Sentinel names (its client finds the new one)."""

    NAME = "redis"

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def refresh(self) -> None:
        return None

    def owner(self, channel: bytes) -> str:
        return self.NAME

    def pubsub(self, shard: str) -> PubSub:
        return self._redis.pubsub()

    async def publish(self, channel: bytes, message: bytes) -> None:
        await self._redis.publish(channel, message)

    async def aclose(self) -> None:
        await self._redis.aclose()


class ClusterShards:
    """The primaries of a Redis Cluster, by the slot map of a RedisCluster client."""

    def __init__(self, cluster: RedisCluster, **node_options: Any) -> None:
        self._cluster = cluster
        self._node_options = node_options
        self._nodes: dict[str, Redis] = {}
        self._ready = False

    async def refresh(self) -> None:
        if not self._ready:
            await self._cluster.initialize()  # the first read also retires the seed nodes
        else:
            await self._cluster.nodes_manager.initialize()
        self._ready = True

    def owner(self, channel: bytes) -> str:
        if not self._ready:
            raise TopologyUnknown("slot map not read yet")
        try:
            node = self._cluster.nodes_manager.get_node_from_slot(key_slot(channel))
        except RedisClusterException as exc:  # SlotNotCoveredError among them
            raise TopologyUnknown(str(exc)) from exc
        return str(node.name)

    def pubsub(self, shard: str) -> PubSub:
        client = self._nodes.get(shard)
        if client is None:
            host, _, port = shard.rpartition(":")
            client = self._nodes[shard] = Redis(host=host, port=int(port), **self._node_options)
        return client.pubsub()

    async def publish(self, channel: bytes, message: bytes) -> None:
        await self._cluster.publish(channel, message)

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        await self._cluster.aclose()


def shards_for(url: str, **options: Any) -> Shards:
    """The subscriber side of REDIS_URL, with `options` for every pub/sub connection."""
    address = parse_redis_url(url)
    if address.kind == "cluster":
        return ClusterShards(cluster_client(url), **address.auth, **options)
    if address.kind == "sentinel":
        return SingleShard(primary_client(address, **options))
    return SingleShard(Redis.from_url(url, **options))
