"""`longtail dev`: the whole system in one process, on embedded defaults.

An in-process Redis-compatible server (fakeredis over TCP) unless REDIS_URL is set, a
SQLite file, chatcore, and two gateways on two ports: open either, chat across both.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable

from chatcore.app import Chatcore
from gateway.app import Gateway
from longtail.settings import Settings

log = logging.getLogger("longtail.dev")


def start_embedded_redis(host: str = "127.0.0.1", port: int = 0) -> tuple[str, Callable[[], None]]:
    """A fakeredis TCP server in a thread; returns its URL and a stop function."""
    from fakeredis import TcpFakeServer

    server = TcpFakeServer((host, port))
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    bound_port = server.server_address[1]

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"redis://{host}:{bound_port}/0", stop


async def run_dev(settings: Settings, first_port: int) -> Callable[[], Awaitable[None]]:
    stop_redis: Callable[[], None] | None = None
    if not os.environ.get("REDIS_URL"):
        url, stop_redis = start_embedded_redis()
        settings = settings.with_(redis_url=url)
        log.info("embedded Redis-compatible server at %s", url)
    core = Chatcore(settings)
    # Internal to this process: any free port will do, the gateways are told which.
    await core.start(0, auto_migrate=True)
    settings = settings.with_(chatcore_url=f"http://127.0.0.1:{core.port}")
    gateways = [Gateway(settings), Gateway(settings)]
    for offset, gateway in enumerate(gateways):
        await gateway.start(first_port + offset if first_port else 0)
    print("Longtail is running:", flush=True)
    for gateway in gateways:
        print(f"  gateway  http://127.0.0.1:{gateway.port}/", flush=True)
    print(f"  chatcore http://127.0.0.1:{core.port}/internal/health (internal)", flush=True)
    print(f"  database {settings.database_url}", flush=True)

    async def stop() -> None:
        for gateway in gateways:
            await gateway.stop()
        await core.stop()
        if stop_redis is not None:
            stop_redis()

    return stop
