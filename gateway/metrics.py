"""The gateway's Prometheus metrics, one registry per gateway (never module-global).

Counters the hub already keeps (reconnects, subscribed channels, health) are read at
scrape time by a collector, so the hub stays free of metrics code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from longtail.wire import Event

if TYPE_CHECKING:
    from gateway.catchup import Catchup
    from gateway.hub import Hub
    from gateway.session_cache import SessionCache

# Delivery latencies on loopback are around a millisecond; across a network tens.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
POLLS = ("longpoll", "jsonp")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.held = Gauge(
            "longtail_held_connections",
            "Event connections held open now.",
            ["transport"],
            registry=r,
        )
        self.delivered = Counter(
            "longtail_events_delivered_total",
            "Events written to clients.",
            ["transport"],
            registry=r,
        )
        self.latency = Histogram(
            "longtail_publish_to_delivery_seconds",
            "From chatcore's publish to the write to the client.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.closed = Counter(
            "longtail_stream_closes_total",
            "Streams the server ended, by reason (slow_consumer, draining, max_age).",
            ["reason"],
            registry=r,
        )
        self.chatcore_seconds = Histogram(
            "longtail_chatcore_request_seconds",
            "Gateway to chatcore request time.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chatcore_errors = Counter(
            "longtail_chatcore_errors_total",
            "chatcore requests that failed (unreachable, 5xx).",
            ["route"],
            registry=r,
        )
        self.sends = Counter(
            "longtail_message_sends_total",
            "Message sends by outcome: created, duplicate, or the error code.",
            ["outcome"],
            registry=r,
        )
        self.pending_polls = Gauge(
            "longtail_pending_long_polls", "Long-polls (plain and JSONP) waiting now.", registry=r
        )
        # Children by transport, looked up once: labels() takes a lock and checks its
        # arguments on every call, twice per interval poll (3% of its CPU in a profile).
        self._held: dict[str, Gauge] = {}
        self._delivered: dict[str, Counter] = {}

    def watch(self, hub: Hub, catchup: Catchup, sessions: SessionCache) -> None:
        self.registry.register(_HubCollector(hub, catchup, sessions))

    def holding(self, transport: str) -> Gauge:
        """The held-connections gauge of one transport."""
        return _child(self._held, self.held, transport)

    def wrote(self, transport: str, events: list[Event]) -> None:
        """Count events written to a client and how long they took from the publish."""
        if not events:
            return
        _child(self._delivered, self.delivered, transport).inc(len(events))
        now = time.time()
        for event in events:
            if event.published is not None:
                self.latency.observe(max(0.0, now - event.published))


M = TypeVar("M", Gauge, Counter)


def _child(children: dict[str, M], metric: M, label: str) -> M:
    """`metric.labels(label)`, looked up once and kept in `children`."""
    child = children.get(label)
    if child is None:
        child = children[label] = metric.labels(label)
    return child


class _HubCollector(Collector):
    def __init__(self, hub: Hub, catchup: Catchup, sessions: SessionCache) -> None:
        self.hub = hub
        self.catchup = catchup
        self.sessions = sessions

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "longtail_subscribed_channels",
            "User channels this gateway subscribes to.",
            value=self.hub.channel_count(),
        )
        yield GaugeMetricFamily(
            "longtail_redis_subscriber_healthy",
            "1 when the pub/sub connection is up and heard from recently.",
            value=1 if self.hub.healthy else 0,
        )
        yield CounterMetricFamily(
            "longtail_redis_reconnects",
            "Times the pub/sub connection was re-established.",
            value=self.hub.reconnects,
        )
        reads = CounterMetricFamily(
            "longtail_catchup_reads",
            "Catch-up reads by where they were served from.",
            labels=["source"],
        )
        reads.add_metric(["buffer"], self.catchup.from_buffer)
        reads.add_metric(["chatcore"], self.catchup.from_chatcore)
        yield reads
        yield CounterMetricFamily(
            "longtail_session_cache_hits",
            "Requests authenticated from the gateway's own session cache, without Redis.",
            value=self.sessions.hits,
        )
