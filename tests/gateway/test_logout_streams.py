"""A logout ends the connections that session holds open, on every gateway, at once;
the same user's other sessions keep theirs."""

from __future__ import annotations

import asyncio

from tests.client import Client
from tests.streams import read_stream, read_ws
from tests.waiting import eventually


async def test_logout_closes_that_sessions_streams_everywhere_and_no_others(pair, stack, http):
    alice, bob = pair
    cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    resp = await Client(http, stack.urls[0]).request(
        "POST", "/api/login", {"username": bob.username, "password": "correct horse"}
    )
    other_session = Client(http, stack.urls[0], token=resp.body["token"], user_id=bob.user_id)

    sse = asyncio.create_task(
        read_stream(
            http,
            stack.urls[0] + f"/api/events/stream?cursor={cursor}",
            bob.headers(),
            "sse",
            lambda g: False,
            deadline=10,
        )
    )
    ws = await http.ws_connect(
        stack.urls[1].replace("http", "ws") + f"/api/events/ws?cursor={cursor}",
        headers={**bob.headers(), "Origin": stack.urls[1]},
    )
    frames = asyncio.create_task(read_ws(ws, lambda g: False, deadline=10))
    bob.cursor = cursor
    poll = asyncio.create_task(bob.poll(base=stack.urls[1], timeout=10))
    keeps = asyncio.create_task(
        read_stream(
            http,
            stack.urls[1] + f"/api/events/stream?cursor={cursor}",
            other_session.headers(),
            "sse",
            lambda g: bool(g.events),
            deadline=10,
        )
    )
    await eventually(lambda: sum(g.hub.connection_count() for g in stack.gateways) == 4)

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await bob.request("POST", "/api/logout")).status == 200
    stream = await asyncio.wait_for(sse, 5)
    assert stream.controls[-1]["reason"] == "logged_out"
    await asyncio.wait_for(frames, 5)
    assert ws.close_code == 4401
    await ws.close()
    assert await asyncio.wait_for(poll, 5) == []
    assert loop.time() - started < 3, "ended by the logout, not by a timeout"

    # The other session was not logged out: it still receives.
    await alice.send(bob, "still here for the other session")
    other = await asyncio.wait_for(keeps, 5)
    assert other.events[-1]["message"]["body"] == "still here for the other session"
