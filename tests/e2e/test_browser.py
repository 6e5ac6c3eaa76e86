"""longtail.js in a real Chromium against real gateway processes, every transport."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.buffering_proxy import BufferingProxy
from tests.client import Client, messages
from tests.e2e.browser import BrowserUser, wait_until
from tests.e2e.cluster import Cluster

pytestmark = pytest.mark.e2e

HOSTILE = "</script><script>alert(1)</script><img src=x onerror=alert(2)> \"q\" 'q' \\\n\u2028 é 👋"
PASSWORD = "browser-password"


@pytest.fixture
async def people(http, cluster: Cluster) -> tuple[Client, Client]:
    alice = await Client(http, cluster.urls[0]).signup(f"alice{uuid.uuid4().hex[:6]}", PASSWORD)
    bob = await Client(http, cluster.urls[1]).signup(f"bob{uuid.uuid4().hex[:6]}", PASSWORD)
    await alice.befriend(bob)
    return alice, bob


async def browser_user(browser: Any, origin: str, client: Client) -> BrowserUser:
    context = await browser.new_context()
    return await BrowserUser(await context.new_page()).open(origin, client.username, PASSWORD)


@pytest.mark.parametrize(
    "transport", ["websocket", "sse", "xhr", "multipart", "longpoll", "jsonp", "iframe"]
)
async def test_each_transport_delivers_in_the_browser_and_resumes_on_another_gateway(
    transport, browser, people, cluster
):
    alice, bob = people
    page = await browser_user(browser, cluster.urls[1], bob)
    assert await page.start(transport=transport, firstByteTimeout=10000) == transport
    bodies = ["first", HOSTILE, "third"]
    for body in bodies:
        assert (await alice.send(bob, body, base=cluster.urls[0])).status == 201
    got = await page.wait_messages(3)
    assert messages(got) == bodies
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(set(seqs)), "no duplicates, in order"
    assert not await page.value("window.pwned") and page.dialogs == []
    cursor = got[-2]["seq"]  # pretend the last one never arrived
    await page.value("window.lt.stop()")

    # The same user in a page on another gateway, resuming from that cursor.
    elsewhere = await browser_user(browser, cluster.urls[2], bob)
    await elsewhere.start(transport=transport, cursor=cursor, firstByteTimeout=10000)
    await alice.send(bob, "after resume", base=cluster.urls[1])
    resumed = await elsewhere.wait_messages(2)
    assert messages(resumed) == ["third", "after resume"]
    assert not await elsewhere.value("window.pwned") and elsewhere.dialogs == []


COUNT_POSTS = """() => {
  window.posts = 0;
  const fetch = window.fetch;
  window.fetch = (url, ...rest) => {
    if (String(url).includes("/api/messages")) window.posts += 1;
    return fetch(url, ...rest);
  };
}"""


async def test_auto_mode_picks_websocket_and_send_is_delivered_once(browser, people, cluster):
    alice, bob = people
    page = await browser_user(browser, cluster.urls[0], bob)
    assert await page.start() == "websocket"
    await page.value(COUNT_POSTS)
    message = await page.value(f"window.lt.send({alice.user_id}, 'from the browser')")
    assert message["body"] == "from the browser"
    assert await page.value("window.posts") == 0, "sent on the open WebSocket, not by POST"
    own = await page.wait_messages(1)  # the sender's own event reaches their other tabs
    assert messages(own) == ["from the browser"]
    alice.cursor = 0
    assert messages(await alice.poll_until(3)) == ["from the browser"]
    refused = await page.value(
        "window.lt.send(424242, 'nobody').then(() => null, (e) => [e.status, e.code])"
    )
    assert refused == [403, "not_friend"]
    # With no socket open, the same call POSTs.
    await page.value("window.lt.stop()")
    await page.value(f"window.lt.send({alice.user_id}, 'by post')")
    assert await page.value("window.posts") == 1
    assert messages(await alice.poll_until(1)) == ["by post"]


async def test_behind_a_buffering_proxy_the_client_falls_back_to_long_polling(
    browser, people, cluster
):
    alice, bob = people
    proxy = await BufferingProxy(cluster.urls[0]).start()
    try:
        page = await browser_user(browser, proxy.url, bob)
        await page.start(firstByteTimeout=1500)
        await wait_until(
            page.page,
            "() => window.statuses.some(s => s.state === 'open' && s.transport === 'longpoll')",
            timeout=20,
        )
        steps = await page.value("window.fallbacks.map(f => f.from)")
        assert steps == ["websocket", "sse", "xhr"]
        await alice.send(bob, "through the proxy")
        assert messages(await page.wait_messages(1)) == ["through the proxy"]
    finally:
        await proxy.stop()
