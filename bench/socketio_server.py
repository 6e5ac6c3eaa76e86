"""The python-socketio chat server `python -m bench.compare` measures Longtail against.

    python -m bench.socketio_server --port P --redis-url URL --channel NAME --secret S

What a small chat on python-socketio looks like when it is written the way its
documentation suggests: an aiohttp app, `socketio.AsyncServer` with
`socketio.AsyncRedisManager` so that several processes share rooms through Redis, and
three handlers:

- connect: the client's `auth` names its user and carries a token (an HMAC of the user
  id under the run's secret, standing in for Longtail's session check); the connection
  joins the room `user:<id>`.
- `join` `{room}`: the connection joins `room:<name>` (the fan-out room); acked.
- `send` `{to | room, body}`: emits `message` `{from, body}` to `user:<to>` or
  `room:<name>`, through Redis so the recipients' own server delivers it; the ack
  answers the sender once the emit was handed to Redis.

No persistence, no sequence numbers, no catch-up: python-socketio offers none, which is
part of what the comparison shows (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
from typing import Any

import socketio
from aiohttp import web

# A connection that missed this many pings is gone; python-socketio's defaults (25 s
# interval, 20 s timeout), written out so the held-connection figures say what they hold.
PING_INTERVAL = 25
PING_TIMEOUT = 20
SHUTDOWN_TIMEOUT = 2.0


def user_token(secret: str, user_id: int) -> str:
    """What a client presents for user_id (the bench mints it with the same secret)."""
    return hmac.new(secret.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()


def make_server(redis_url: str, channel: str, secret: str) -> socketio.AsyncServer:
    manager = socketio.AsyncRedisManager(redis_url, channel=channel)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        # The load generator sends no Origin header; browsers would, and a real
        # deployment would list its own origin here.
        cors_allowed_origins=[],
    )

    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
        try:
            user_id = int(auth["user"])
            token = str(auth["token"])
        except (KeyError, TypeError, ValueError):
            return False
        if not hmac.compare_digest(token, user_token(secret, user_id)):
            return False
        await sio.enter_room(sid, f"user:{user_id}")
        return True

    async def join(sid: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("room"), str):
            return {"error": "room must be a string"}
        await sio.enter_room(sid, f"room:{data['room']}")
        return {"ok": True}

    async def send(sid: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("body"), str):
            return {"error": "body must be a string"}
        if isinstance(data.get("room"), str):
            target = f"room:{data['room']}"
        elif isinstance(data.get("to"), int):
            target = f"user:{data['to']}"
        else:
            return {"error": "to (a user id) or room (a name) is required"}
        await sio.emit("message", {"body": data["body"]}, to=target)
        return {"ok": True}

    sio.on("connect", connect)
    sio.on("join", join)
    sio.on("send", send)
    return sio


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.socketio_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", required=True, help="the Redis pub/sub channel")
    parser.add_argument("--secret", required=True, help="what user tokens are signed with")
    args = parser.parse_args(argv)
    # The format bench.cluster reads problems from: "date time LEVEL logger: message".
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = web.Application()
    make_server(args.redis_url, args.channel, args.secret).attach(app)
    app.router.add_get("/healthz", healthz)
    # shutdown_timeout: on SIGTERM, aiohttp waits this long for open requests; an
    # Engine.IO long-poll stays open for up to a ping interval (25 s) otherwise.
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )


if __name__ == "__main__":
    main()
