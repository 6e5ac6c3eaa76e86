"""What one held connection keeps alive, counted inside a gateway.

    python -m bench.held_profile [--transport longpoll] [--count 2000] [--top 25]

Runs a Gateway in this process on real Redis (sessions seeded as chatcore would, no
chatcore needed), opens `count` idle connections of one transport from a thread with
plain blocking sockets (so the client adds almost no Python objects), and prints:
tracemalloc's growth by allocation site, and the growth in live objects by type (gc).
A profiling tool, not a benchmark: tracemalloc itself slows and grows the process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import secrets
import socket
import sys
import threading
import tracemalloc
from collections import Counter

from redis.asyncio import Redis

from bench.cluster import HOST, REDIS_URL, free_port
from bench.gateway_only import PATHS, USER_BASE, delete_prefix, request_bytes, seed_users
from longtail.settings import LOAD_TEST_LIMITS, Settings
from longtail.wire import Keys


def type_counts() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def open_sockets(port: int, transport: str, users: list[int], out: list[socket.socket]) -> None:
    for user in users:
        sock = socket.create_connection((HOST, port))
        sock.sendall(request_bytes(port, PATHS[transport], user, transport == "websocket"))
        out.append(sock)


async def wait_held(gateway: object, count: int) -> None:
    hub = gateway.hub  # type: ignore[attr-defined]
    for _ in range(4000):
        if hub.connection_count() >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"only {hub.connection_count()} held")


async def main_async(args: argparse.Namespace) -> None:
    from gateway.app import Gateway

    prefix = f"prof{secrets.token_hex(4)}"
    redis = Redis.from_url(REDIS_URL)
    keys = Keys(prefix)
    await seed_users(redis, keys, args.count + 200)
    env = {
        **LOAD_TEST_LIMITS,
        "REDIS_URL": REDIS_URL,
        "CHATCORE_URL": f"http://{HOST}:{free_port()}",
        "LONGTAIL_REDIS_PREFIX": prefix,
        "LONGTAIL_POLL_TIMEOUT_MAX": "120",
        "LONGTAIL_STREAM_MAX_AGE": "3600",
        "LONGTAIL_HEARTBEAT": "300",
        "HOST": HOST,
    }
    gateway = Gateway(Settings.from_env(env))
    port = free_port()
    await gateway.start(port)
    # Presence reports arrivals to chatcore, which is not running here.
    gateway.hub.on_arrive = gateway.hub.on_leave = None
    logging.getLogger().setLevel(logging.ERROR)
    socks: list[socket.socket] = []
    try:
        warm = list(range(USER_BASE + args.count, USER_BASE + args.count + 200))
        await asyncio.to_thread(open_sockets, port, args.transport, warm, socks)
        await wait_held(gateway, 200)
        for s in socks:
            s.close()
        socks.clear()
        while gateway.hub.connection_count():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        tracemalloc.start(args.frames)
        types0 = type_counts()
        snap0 = tracemalloc.take_snapshot()
        users = list(range(USER_BASE, USER_BASE + args.count))
        thread = threading.Thread(target=open_sockets, args=(port, args.transport, users, socks))
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.05)
        await wait_held(gateway, args.count)
        await asyncio.sleep(1.0)
        types1 = type_counts()
        snap1 = tracemalloc.take_snapshot()
        n = args.count
        stats = snap1.compare_to(snap0, "traceback")
        total = sum(s.size_diff for s in stats)
        print(f"\n== {args.transport}: tracemalloc growth {total / n:.0f} B per connection ==")
        for stat in stats[: args.top]:
            if stat.size_diff <= 0:
                continue
            frames = [
                f"{f.filename.rsplit('site-packages/', 1)[-1]}:{f.lineno}"
                for f in stat.traceback[-args.show :]
            ]
            print(
                f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} blk  "
                + " <- ".join(reversed(frames))
            )
        print(f"\n== live objects per connection (gc), {args.transport} ==")
        diff = types1 - types0
        for name, count in diff.most_common(args.top):
            print(f"{count / n:7.2f}  {name}")
    finally:
        tracemalloc.stop()
        for s in socks:
            s.close()
        await gateway.stop()
        await delete_prefix(redis, prefix)
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.held_profile", description=__doc__)
    parser.add_argument("--transport", default="longpoll", choices=sorted(PATHS))
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--show", type=int, default=4)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
