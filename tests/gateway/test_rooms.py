"""Group rooms, typing indicators and live presence across gateways."""

from __future__ import annotations

import asyncio
import uuid

from tests.client import messages
from tests.streams import read_stream
from tests.waiting import eventually


def uname(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


async def test_room_messages_fan_out_to_every_member_and_membership_changes_are_events(
    pair, new_client
):
    alice, bob = pair
    carol = await new_client(1).signup(uname("carol"))
    await alice.befriend(carol)
    for c in (alice, bob, carol):
        c.cursor = (await c.request("GET", "/api/events")).body["cursor"]
    created = await alice.request(
        "POST", "/api/rooms", {"name": "Trip 🏔", "members": [bob.user_id]}
    )
    assert created.status == 201 and created.body["name"] == "Trip 🏔"
    room = created.body["id"]
    assert {m["id"] for m in created.body["members"]} == {alice.user_id, bob.user_id}
    invited = await alice.request("POST", f"/api/rooms/{room}/members", {"user_id": carol.user_id})
    assert invited.status == 200 and invited.body["added"] is True
    sent = await bob.request(
        "POST", "/api/messages", {"conversation_id": room, "body": "hello room", "client_id": "r1"}
    )
    assert sent.status == 201
    for member, first in ((alice, "room_joined"), (bob, "room_joined"), (carol, "room_joined")):
        events = await member.poll_until(1 if member is carol else 2)
        assert events[0]["type"] == first
    assert messages(await carol.poll(timeout=1)) in (["hello room"], [])
    listing = (await carol.request("GET", "/api/conversations")).body["conversations"]
    group = next(c for c in listing if c["kind"] == "group")
    assert group["name"] == "Trip 🏔" and group["members"] == 3
    assert group["last_message"]["body"] == "hello room" and group["unread"] == 1
    members = (await carol.request("GET", f"/api/rooms/{room}")).body["members"]
    assert {m["username"] for m in members} == {alice.username, bob.username, carol.username}

    assert (await carol.request("POST", f"/api/rooms/{room}/leave")).status == 200
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"] - 1
    assert [e["type"] for e in await bob.poll(timeout=1)] == ["member_left"]
    resp = await carol.request(
        "POST", "/api/messages", {"conversation_id": room, "body": "still here?", "client_id": "r2"}
    )
    assert resp.status == 404 and resp.error_code == "conversation_not_found"


async def test_rooms_take_only_friends(pair, new_client):
    alice, _ = pair
    stranger = await new_client(0).signup(uname("stranger"))
    resp = await alice.request("POST", "/api/rooms", {"name": "x", "members": [stranger.user_id]})
    assert resp.status == 403 and resp.error_code == "not_friend"
    for body in ({"name": ""}, {"name": "x", "members": "all"}, {"members": []}):
        assert (await alice.request("POST", "/api/rooms", body)).status == 400


async def test_typing_reaches_the_other_member_live_and_is_never_replayed(pair, stack, http):
    alice, bob = pair
    conversation = (await alice.request("GET", "/api/conversations")).body["conversations"][0]["id"]
    url = stack.urls[1] + f"/api/events/stream?cursor={bob.cursor + 2}"
    reader = asyncio.create_task(
        read_stream(
            http,
            url,
            bob.headers(),
            "sse",
            lambda got: any(c["type"] == "typing" for c in got.controls),
        )
    )
    await asyncio.sleep(0.3)
    assert (
        await alice.request("POST", "/api/typing", {"conversation_id": conversation})
    ).status == 200
    got = await asyncio.wait_for(reader, 5)
    typing = next(c for c in got.controls if c["type"] == "typing")
    assert typing == {
        "type": "typing",
        "conversation_id": conversation,
        "user": {"id": alice.user_id, "username": alice.username},
    }
    # Ephemeral: a later catch-up from the same cursor does not contain it.
    assert all(e["type"] != "typing" for e in await bob.poll(timeout=0))
    resp = await alice.request("POST", "/api/typing", {"conversation_id": 999999})
    assert resp.status == 404


async def test_friends_get_a_presence_push_when_someone_comes_and_goes(pair, stack, http):
    alice, bob = pair
    alice.cursor = (await alice.request("GET", "/api/events")).body["cursor"]
    pushes: list[dict] = []

    async def watch() -> None:
        url = stack.urls[0] + f"/api/events/stream?cursor={alice.cursor}"
        await read_stream(
            http,
            url,
            alice.headers(),
            "sse",
            lambda got: (
                pushes.__setitem__(
                    slice(None), [c for c in got.controls if c["type"] == "presence"]
                )
                or len(pushes) >= 2
            ),
            deadline=10,
        )

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    await bob.poll(base=stack.urls[1], timeout=0.5)  # online for half a second, then gone
    await asyncio.wait_for(watcher, 10)
    assert pushes == [
        {"type": "presence", "user_id": bob.user_id, "online": True},
        {"type": "presence", "user_id": bob.user_id, "online": False},
    ]


async def test_reconnecting_within_the_grace_does_not_flicker(pair, stack):
    alice, bob = pair
    bob.cursor = (await bob.request("GET", "/api/events")).body["cursor"]
    for _ in range(3):
        await bob.poll(timeout=0.1)  # back-to-back long-polls, as a client makes them

    async def online() -> bool:
        listing = (await alice.request("GET", "/api/friends")).body["friends"]
        return listing[0]["online"]

    assert await online()
    await eventually(lambda: _not(online()), deadline=5, what="offline after the grace")


async def _not(value) -> bool:
    return not await value
