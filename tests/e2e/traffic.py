"""Chat traffic that behaves like longtail.js through faults: retry, resume, rotate.

Receivers long-poll from their cursor and retry errors; senders retry each message
with its client_id until it is stored. The fault tests measure what arrives.
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from tests.client import Client

RETRY_PAUSE = 0.2
MAX_SEND_ATTEMPTS = 200


async def receive(
    client: Client,
    want: int,
    *,
    bases: list[str] | None = None,
    poll_timeout: float = 2,
    stop: asyncio.Event | None = None,
) -> list[str]:
    """Message bodies from `client.cursor` on, until `want` arrived (or `stop` is set);
    long-polls rotate over `bases` (default: the client's own base)."""
    bodies: list[str] = []
    for attempt in itertools.count():
        if len(bodies) >= want or (stop is not None and stop.is_set()):
            break
        try:
            resp = await client.request(
                "GET",
                f"/api/events?cursor={client.cursor}&timeout={poll_timeout}",
                base=bases[attempt % len(bases)] if bases else None,
                timeout=poll_timeout + 10,
            )
        except (aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(RETRY_PAUSE)
            continue
        if resp.status != 200:
            await asyncio.sleep(RETRY_PAUSE)
            continue
        for event in resp.body["events"]:
            if event.get("type") == "message":
                bodies.append(event["message"]["body"])
        client.cursor = resp.body["cursor"]
    return bodies


async def send_all(
    sender: Client,
    to: Client,
    tag: str,
    count: int,
    *,
    gap: float,
    bases: list[str] | None = None,
) -> None:
    """Send `tag:0` .. `tag:count-1`, `gap` s apart, each retried with its client_id
    until stored; attempts rotate over `bases` (default: the sender's own base)."""
    for n in range(count):
        for attempt in itertools.count():
            base = bases[(n + attempt) % len(bases)] if bases else None
            try:
                resp = await sender.send(to, f"{tag}:{n}", client_id=f"{tag}-{n}", base=base)
                if resp.status == 201:
                    break
            except (aiohttp.ClientError, TimeoutError):
                pass
            assert attempt < MAX_SEND_ATTEMPTS, f"{tag}:{n} never stored"
            await asyncio.sleep(RETRY_PAUSE)
        await asyncio.sleep(gap)
