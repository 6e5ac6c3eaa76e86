"""Group rooms: create with friends, invite more friends, leave. Every member's event log
hears of every change, so all their tabs and devices agree on who is in the room."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore import accounts, friends
from chatcore.eventlog import Delivery, append
from chatcore.messaging import require_member
from chatcore.models import Conversation, Member, User
from longtail.errors import ApiError, bad_request
from longtail.validate import field_int, field_str, is_id

MAX_MEMBERS = 100
MAX_NAME = 64


def room_json(conversation: Conversation) -> dict[str, Any]:
    return {"id": conversation.id, "kind": "group", "name": conversation.name}


async def member_ids(tx: AsyncSession, conversation_id: int) -> list[int]:
    rows = await tx.execute(select(Member.user_id).where(Member.conversation_id == conversation_id))
    return list(rows.scalars())


async def require_room(tx: AsyncSession, user_id: int, conversation_id: int) -> Conversation:
    await require_member(tx, user_id, conversation_id)
    conversation = await tx.get(Conversation, conversation_id)
    if conversation is None or conversation.kind != "group":
        raise ApiError(404, "room_not_found", "No such room.")
    return conversation


async def create(
    tx: AsyncSession, user_id: int, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Delivery]]:
    name = field_str(body, "name", max_len=MAX_NAME).strip()
    if not name:
        raise bad_request("A room needs a name.", "invalid_field")
    invited = body.get("members", [])
    if not isinstance(invited, list) or not all(is_id(u) for u in invited):
        raise bad_request("'members' must be a list of user ids.", "invalid_field")
    invited = sorted(set(invited) - {user_id})
    if len(invited) + 1 > MAX_MEMBERS:
        raise bad_request(f"A room has at most {MAX_MEMBERS} members.", "too_many_members")
    for other in invited:
        if not await friends.are_friends(tx, user_id, other):
            raise ApiError(403, "not_friend", "You can only add your friends to a room.")
    conversation = Conversation(kind="group", name=name)
    tx.add(conversation)
    await tx.flush()
    everyone = [user_id, *invited]
    tx.add_all([Member(conversation_id=conversation.id, user_id=u) for u in everyone])
    await tx.flush()
    creator = accounts.public(await _user(tx, user_id))
    room = room_json(conversation)
    deliveries = await append(
        tx, [(u, "room_joined", {"room": room, "by": creator}) for u in everyone]
    )
    return {**room, "members": await members_json(tx, conversation.id)}, deliveries


async def invite(
    tx: AsyncSession, user_id: int, conversation_id: int, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Delivery]]:
    room = await require_room(tx, user_id, conversation_id)
    other_id = field_int(body, "user_id")
    if not await friends.are_friends(tx, user_id, other_id):
        raise ApiError(403, "not_friend", "You can only add your friends to a room.")
    current = await member_ids(tx, conversation_id)
    if other_id in current:
        return {"room": room_json(room), "added": False}, []
    if len(current) >= MAX_MEMBERS:
        raise bad_request(f"A room has at most {MAX_MEMBERS} members.", "too_many_members")
    tx.add(Member(conversation_id=conversation_id, user_id=other_id))
    await tx.flush()
    newcomer = accounts.public(await _user(tx, other_id))
    inviter = accounts.public(await _user(tx, user_id))
    items: list[tuple[int, str, dict[str, Any]]] = [
        (other_id, "room_joined", {"room": room_json(room), "by": inviter})
    ]
    items += [
        (u, "member_joined", {"conversation_id": conversation_id, "user": newcomer, "by": inviter})
        for u in current
    ]
    return {"room": room_json(room), "added": True}, await append(tx, items)


async def leave(tx: AsyncSession, user_id: int, conversation_id: int) -> list[Delivery]:
    room = await require_room(tx, user_id, conversation_id)
    await tx.execute(
        delete(Member).where(Member.conversation_id == conversation_id, Member.user_id == user_id)
    )
    leaver = accounts.public(await _user(tx, user_id))
    items: list[tuple[int, str, dict[str, Any]]] = [
        (user_id, "room_left", {"room": room_json(room)})
    ]
    items += [
        (u, "member_left", {"conversation_id": conversation_id, "user": leaver})
        for u in await member_ids(tx, conversation_id)
    ]
    return await append(tx, items)


async def members_json(tx: AsyncSession, conversation_id: int) -> list[dict[str, Any]]:
    rows = await tx.execute(
        select(User)
        .join(Member, Member.user_id == User.id)
        .where(Member.conversation_id == conversation_id)
        .order_by(User.username_key)
    )
    return [accounts.public(u) for u in rows.scalars()]


async def members(tx: AsyncSession, user_id: int, conversation_id: int) -> dict[str, Any]:
    room = await require_room(tx, user_id, conversation_id)
    return {**room_json(room), "members": await members_json(tx, conversation_id)}


async def _user(tx: AsyncSession, user_id: int) -> User:
    user = await tx.get(User, user_id)
    if user is None:
        raise ApiError(404, "user_not_found", "No such user.")
    return user
