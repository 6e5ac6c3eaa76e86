"""What ops rely on: metrics that move with traffic, and a drain that hands clients over."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from gateway.inflight import InFlight
from tests.streams import count, read_stream, read_ws
from tests.waiting import eventually


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "")
    match = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


async def test_metrics_move_with_traffic(pair, stack, http):
    alice, bob = pair
    url = stack.urls[1]
    before = await scrape(http, url)
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    waiting = asyncio.create_task(bob.poll(base=url, timeout=10))
    await eventually(
        lambda: _held(http, url, "longpoll"), what="the long-poll shows as held and pending"
    )
    assert (await alice.send(bob, "counted", client_id="m-1")).status == 201
    assert (await alice.send(bob, "counted", client_id="m-1")).status == 200
    assert (await alice.send(bob, "x" * 5000)).status == 413
    await waiting
    sse = await read_stream(
        http, url + "/api/events/stream?cursor=0", bob.headers(), "sse", count(3)
    )
    assert len(sse.events) == 3
    after = await scrape(http, url)
    assert sample(after, "longtail_events_delivered_total", transport="longpoll") >= 1
    assert sample(after, "longtail_events_delivered_total", transport="sse") >= 3
    assert sample(after, "longtail_publish_to_delivery_seconds_count") > sample(
        before, "longtail_publish_to_delivery_seconds_count"
    )
    assert (
        sample(after, "longtail_catchup_reads_total", source="buffer")
        + sample(after, "longtail_catchup_reads_total", source="chatcore")
        >= 2
    )
    assert sample(after, "longtail_subscribed_channels") >= 1
    assert sample(after, "longtail_redis_subscriber_healthy") == 1
    assert sample(after, "longtail_held_connections", transport="longpoll") == 0
    assert "longtail_chatcore_request_seconds_count" in after
    sender_gateway = await scrape(http, stack.urls[0])
    assert sample(sender_gateway, "longtail_message_sends_total", outcome="created") == 1
    assert sample(sender_gateway, "longtail_message_sends_total", outcome="duplicate") == 1
    assert sample(sender_gateway, "longtail_message_sends_total", outcome="message_too_long") == 1


async def _held(http: aiohttp.ClientSession, url: str, transport: str) -> bool:
    text = await scrape(http, url)
    return (
        sample(text, "longtail_held_connections", transport=transport) == 1
        and sample(text, "longtail_pending_long_polls") == 1
    )


async def test_drain_answers_long_polls_and_closes_streams_with_a_spread_retry(pair, stack, http):
    alice, bob = pair
    gateway = stack.gateways[1]
    url = stack.urls[1]
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    poll = asyncio.create_task(bob.poll(base=url, timeout=20))
    sse = asyncio.create_task(
        read_stream(
            http,
            url + f"/api/events/stream?cursor={bob.cursor}",
            bob.headers(),
            "sse",
            lambda got: False,
            deadline=20,
        )
    )
    ws = await http.ws_connect(
        url.replace("http", "ws") + f"/api/events/ws?cursor={bob.cursor}",
        headers={**bob.headers(), "Origin": url},
    )
    ws_frames = asyncio.create_task(read_ws(ws, lambda got: False, deadline=20))
    await eventually(lambda: gateway.hub.connection_count() == 3, what="three held")

    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.create_task(gateway.stop())
    await eventually(lambda: gateway.services.draining)
    got_poll = await asyncio.wait_for(poll, 5)
    stream = await asyncio.wait_for(sse, 5)
    frames = await asyncio.wait_for(ws_frames, 5)
    await asyncio.wait_for(stopping, gateway.settings.drain_seconds + 2)
    assert loop.time() - started < gateway.settings.drain_seconds

    assert got_poll == [], "the long-poll is answered at once, with its cursor"
    closing = stream.controls[-1]
    assert closing["type"] == "close" and closing["reason"] == "draining"
    assert 0 <= closing["retry_ms"] <= 1000 * gateway.settings.drain_spread
    assert b"retry: %d\n" % closing["retry_ms"] in stream.raw
    assert frames.controls[-1]["reason"] == "draining"
    assert ws.close_code == 1012
    await ws.close()
    stack.gateways.remove(gateway)  # already stopped
    # The clients resume on the gateway that is left, from their cursors.
    await alice.send(bob, "after the drain")
    assert [e["message"]["body"] for e in await bob.poll(base=stack.urls[0])] == ["after the drain"]


async def test_readiness_is_false_while_draining(stack, http):
    gateway = stack.gateways[1]
    gateway.services.draining = True
    async with http.get(stack.urls[1] + "/readyz") as resp:
        body = await resp.json()
    gateway.services.draining = False
    assert resp.status == 503 and body["checks"]["draining"] is True


async def test_request_id_is_echoed_or_made(pair):
    alice, _ = pair
    resp = await alice.request("GET", "/api/me", headers={"X-Request-ID": "trace-abc.1"})
    assert resp.headers["X-Request-ID"] == "trace-abc.1"
    resp = await alice.request("GET", "/api/me", headers={"X-Request-ID": "bad id <forged>"})
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])


async def test_a_stream_opened_on_a_draining_gateway_is_sent_elsewhere(pair, stack, http):
    """Not a 500: a 503 with Retry-After, which nginx answers by trying the next gateway."""
    _, bob = pair
    stack.gateways[1].services.draining = True
    for path in ("/api/events/stream", "/api/events/xhr", "/api/events/multipart"):
        got = await read_stream(
            http, f"{stack.urls[1]}{path}?cursor=0", bob.headers(), "sse", count(1)
        )
        assert got.status == 503, (path, got.raw)
        assert got.headers["Retry-After"] == "1"
        assert b'"code":"draining"' in got.raw.replace(b" ", b"")


def hold_sends(gateway) -> tuple[asyncio.Event, asyncio.Event, list[BaseException]]:
    """Sends through `gateway` wait at its hop to chatcore until `release` is set; what
    ended a held send (a cancellation) is recorded."""
    entered, release, ended = asyncio.Event(), asyncio.Event(), []
    send = gateway.chatcore.send

    async def held(user_id, message):
        entered.set()
        try:
            await release.wait()
        except BaseException as exc:
            ended.append(exc)
            raise
        return await send(user_id, message)

    gateway.chatcore.send = held
    return entered, release, ended


async def test_a_send_in_flight_when_the_drain_starts_is_answered_and_delivered(
    pair, stack, monkeypatch
):
    alice, bob = pair
    gateway = stack.gateways[1]
    entered, release, _ = hold_sends(gateway)
    settling = asyncio.Event()
    settle = InFlight.settle

    async def noted_settle(self, timeout):
        settling.set()
        return await settle(self, timeout)

    monkeypatch.setattr(InFlight, "settle", noted_settle)
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    sending = asyncio.create_task(alice.send(bob, "sent as the drain began", base=stack.urls[1]))
    await asyncio.wait_for(entered.wait(), 5)
    stopping = asyncio.create_task(gateway.stop())
    # A stop that did not wait for the send would have closed its connection by now.
    await eventually(lambda: settling.is_set() or stopping.done(), what="stop reaches the send")
    release.set()
    answer = await asyncio.wait_for(sending, 5)
    await asyncio.wait_for(stopping, gateway.settings.drain_seconds + 2)
    stack.gateways.remove(gateway)  # already stopped
    assert answer.status == 201, answer
    got = await bob.poll(base=stack.urls[0])
    assert [e["message"]["body"] for e in got] == ["sent as the drain began"]


async def test_work_past_the_drain_deadline_is_cancelled_before_redis_closes(pair, stack):
    alice, bob = pair
    gateway = stack.gateways[1]
    gateway.settings = gateway.settings.with_(drain_seconds=0.5)
    entered, _, ended = hold_sends(gateway)
    sending = asyncio.create_task(alice.send(bob, "never answered", base=stack.urls[1]))
    await asyncio.wait_for(entered.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(gateway.stop(), 5)
    stack.gateways.remove(gateway)
    assert loop.time() - started < 2
    assert [type(e) for e in ended] == [asyncio.CancelledError], "cancelled, not left running"
    try:
        answer = await asyncio.wait_for(sending, 5)
    except aiohttp.ClientError:
        pass  # cut, as any request still open at the deadline
    else:
        raise AssertionError(f"a request cut at the deadline was answered: {answer}")
