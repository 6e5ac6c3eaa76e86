"""`longtail`: chatcore, gateway, dev (everything on embedded defaults), migrate, check."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from longtail import ioloop, logs
from longtail.settings import ConfigError, Settings

log = logging.getLogger("longtail")

Stopper = Callable[[], Awaitable[None]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longtail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    core = commands.add_parser("chatcore", help="run chatcore (the database writer)")
    core.add_argument("--port", type=int, help="listen port (default: CHATCORE_URL's port)")
    core.add_argument("--migrate", action="store_true", help="run migrations first")
    gw = commands.add_parser("gateway", help="run one gateway process")
    gw.add_argument("--port", type=int, help="listen port (default: PORT)")
    dev = commands.add_parser("dev", help="chatcore, two gateways and Redis in one process")
    dev.add_argument(
        "--port",
        type=int,
        default=8080,
        help="first gateway's port, the second is the next (default 8080; 0: any free)",
    )
    commands.add_parser("migrate", help="bring the database schema up to date")
    commands.add_parser(
        "check", help="validate the configuration and reach Redis, the database and chatcore"
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"longtail: configuration error: {exc}", file=sys.stderr)
        return 2
    style = settings.log_format
    if args.command == "dev" and "LONGTAIL_LOG_FORMAT" not in os.environ:
        style = "text"
    logs.configure(settings.log_level, style)
    try:
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "check":
            from longtail.check import run_checks

            return 0 if asyncio.run(run_checks(settings)) else 1
        elif args.command == "chatcore":
            asyncio.run(_serve(lambda: _chatcore(settings, args.port, args.migrate)))
        elif args.command == "gateway":
            asyncio.run(_serve(lambda: _gateway(settings, args.port)))
        else:
            from longtail.dev import run_dev

            asyncio.run(_serve(lambda: run_dev(settings, args.port)))
    except ConfigError as exc:
        print(f"longtail: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


async def _serve(start: Callable[[], Awaitable[Stopper]]) -> None:
    """Start, then run until SIGTERM or SIGINT, then stop (gateways drain first)."""
    ioloop.install()
    stop = await start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    log.info("stopping")
    await stop()


async def _migrate(settings: Settings) -> None:
    from chatcore.db import Database
    from chatcore.migrate import migrate

    db = Database(settings.database_url)
    try:
        await migrate(db)
    finally:
        await db.close()
    log.info("database is up to date")


async def _chatcore(settings: Settings, port: int | None, auto_migrate: bool) -> Stopper:
    from chatcore.app import Chatcore

    core = Chatcore(settings)
    await core.start(port, auto_migrate=auto_migrate)
    return core.stop


async def _gateway(settings: Settings, port: int | None) -> Stopper:
    from gateway.app import Gateway

    gateway = Gateway(settings)
    await gateway.start(port)
    return gateway.stop


if __name__ == "__main__":
    sys.exit(main())
