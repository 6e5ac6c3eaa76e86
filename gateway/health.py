"""Liveness and readiness for load balancers and orchestrators.

/healthz: the process answers. /readyz: it can do its job now: it hears Redis (a
subscriber connection heard from recently; on a Cluster, one primary failing over does
not count, since every gateway shares that), and chatcore answers. Not ready means
"send new clients elsewhere", not "restart me".
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.base import GatewayHandler


class Healthz(GatewayHandler):
    def get(self) -> None:
        self.send_json({"status": "ok"})


class Readyz(GatewayHandler):
    async def get(self) -> None:
        services = self.services
        checks = {
            "redis": services.hub.reachable,
            "chatcore": await services.chatcore.healthy(),
            "draining": services.draining,
        }
        ready = checks["redis"] and checks["chatcore"] and not services.draining
        self.send_json({"ready": ready, "checks": checks}, 200 if ready else 503)


class Metrics(GatewayHandler):
    """Prometheus text format; scraped per gateway, not through the load balancer."""

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.services.metrics.registry))
