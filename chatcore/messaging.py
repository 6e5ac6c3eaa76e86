"""Direct messages: idempotent sends, conversation lists with unread counts, paged history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from chatcore import friends
from chatcore.eventlog import Delivery, append
from chatcore.models import Conversation, Member, Message, User
from chatcore.sessions import aware
from longtail.errors import ApiError, bad_request
from longtail.validate import field_int, field_str

MAX_CLIENT_ID = 64
HISTORY_PAGE = 50
HISTORY_MAX = 200


def message_json(message: Message, sender: User) -> dict[str, Any]:
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "sender": {"id": sender.id, "username": sender.username},
        "body": message.body,
        "client_id": message.client_id,
        "created_at": aware(message.created_at).isoformat().replace("+00:00", "Z"),
    }


async def send(
    tx: AsyncSession, sender_id: int, body: dict[str, Any], max_chars: int
) -> tuple[dict[str, Any], bool, list[Delivery]]:
    """Store a message and every member's event; a repeated client_id returns the first.

    The body names a friend (`to`, their direct conversation) or a room the sender is in
    (`conversation_id`).
    """
    text = field_str(body, "body")
    client_id = field_str(body, "client_id", max_len=MAX_CLIENT_ID)
    if not client_id:
        raise bad_request("'client_id' must not be empty.", "invalid_field")
    if not text.strip():
        raise bad_request("A message needs some text.", "empty_message")
    if len(text) > max_chars:
        raise ApiError(413, "message_too_long", f"A message is at most {max_chars} characters.")
    sender = await tx.get(User, sender_id)
    if sender is None:
        raise ApiError(401, "unauthorized", "Log in again.")
    conversation_id = await destination(tx, sender_id, body)
    earlier = (
        await tx.execute(
            select(Message).where(Message.sender_id == sender_id, Message.client_id == client_id)
        )
    ).scalar_one_or_none()
    if earlier is not None:
        if earlier.body != text or earlier.conversation_id != conversation_id:
            raise ApiError(
                409, "client_id_reused", "This client_id was already used for a different message."
            )
        return message_json(earlier, sender), False, []
    message = Message(
        conversation_id=conversation_id, sender_id=sender_id, client_id=client_id, body=text
    )
    tx.add(message)
    await tx.flush()
    await tx.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(last_message_id=message.id)
    )
    # Sending counts as reading everything before it.
    await tx.execute(
        update(Member)
        .where(Member.conversation_id == conversation_id, Member.user_id == sender_id)
        .values(last_read_message_id=message.id)
    )
    payload = message_json(message, sender)
    members = (
        await tx.execute(select(Member.user_id).where(Member.conversation_id == conversation_id))
    ).scalars()
    deliveries = await append(tx, [(uid, "message", {"message": payload}) for uid in members])
    return payload, True, deliveries


async def destination(tx: AsyncSession, sender_id: int, body: dict[str, Any]) -> int:
    """The conversation a send goes to: a friend's direct one, or a room of the sender's."""
    if body.get("conversation_id") is not None:
        conversation_id = field_int(body, "conversation_id")
        await require_member(tx, sender_id, conversation_id)
        return conversation_id
    to = field_int(body, "to")
    if to == sender_id or not await friends.are_friends(tx, sender_id, to):
        raise ApiError(403, "not_friend", "You can only message your friends.")
    return await friends.direct_conversation(tx, sender_id, to)


async def conversations(tx: AsyncSession, user_id: int) -> list[dict[str, Any]]:
    """The user's conversations, newest activity first, with unread counts.

    Direct ones say who they are `with`; rooms have a `name` and a member count.
    """
    me = aliased(Member)
    unread = (
        select(Message.conversation_id, func.count().label("unread"))
        .join(me, and_(me.conversation_id == Message.conversation_id, me.user_id == user_id))
        .where(Message.id > me.last_read_message_id, Message.sender_id != user_id)
        .group_by(Message.conversation_id)
        .subquery()
    )
    last = aliased(Message)
    sender = aliased(User)
    rows = (
        await tx.execute(
            select(Conversation, last, sender, func.coalesce(unread.c.unread, 0))
            .join(me, and_(me.conversation_id == Conversation.id, me.user_id == user_id))
            .outerjoin(last, last.id == Conversation.last_message_id)
            .outerjoin(sender, sender.id == last.sender_id)
            .outerjoin(unread, unread.c.conversation_id == Conversation.id)
            .order_by(func.coalesce(Conversation.last_message_id, 0).desc(), Conversation.id.desc())
        )
    ).all()
    ids = [conversation.id for conversation, *_ in rows]
    others: dict[int, list[User]] = {i: [] for i in ids}
    if ids:
        people = await tx.execute(
            select(Member.conversation_id, User)
            .join(User, User.id == Member.user_id)
            .where(Member.conversation_id.in_(ids), Member.user_id != user_id)
        )
        for conversation_id, user in people:
            others[conversation_id].append(user)
    result = []
    for conversation, last_message, last_sender, unread_count in rows:
        entry: dict[str, Any] = {
            "id": conversation.id,
            "kind": conversation.kind,
            "last_message": message_json(last_message, last_sender) if last_message else None,
            "unread": unread_count,
        }
        if conversation.kind == "group":
            entry["name"] = conversation.name
            entry["members"] = len(others[conversation.id]) + 1
        elif others[conversation.id]:
            peer = others[conversation.id][0]
            entry["with"] = {"id": peer.id, "username": peer.username}
        result.append(entry)
    return result


async def history(
    tx: AsyncSession, user_id: int, conversation_id: int, before: int | None, limit: int | None
) -> dict[str, Any]:
    await require_member(tx, user_id, conversation_id)
    page = min(limit or HISTORY_PAGE, HISTORY_MAX)
    query = (
        select(Message, User)
        .join(User, User.id == Message.sender_id)
        .where(Message.conversation_id == conversation_id)
    )
    if before is not None:
        query = query.where(Message.id < before)
    rows = (await tx.execute(query.order_by(Message.id.desc()).limit(page + 1))).all()
    more = len(rows) > page
    messages = [message_json(m, u) for m, u in reversed(rows[:page])]
    return {"messages": messages, "before": messages[0]["id"] if more and messages else None}


async def mark_read(
    tx: AsyncSession, user_id: int, conversation_id: int, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Delivery]]:
    """Move the read marker forward; the other member gets a durable read receipt."""
    message_id = field_int(body, "message_id")
    member = await require_member(tx, user_id, conversation_id)
    newest = (
        await tx.execute(
            select(func.max(Message.id)).where(Message.conversation_id == conversation_id)
        )
    ).scalar() or 0
    if message_id > newest:
        raise bad_request("That message is not in this conversation.", "invalid_message_id")
    if message_id <= member.last_read_message_id:
        return {"conversation_id": conversation_id, "last_read": member.last_read_message_id}, []
    member.last_read_message_id = message_id
    members = (
        (await tx.execute(select(Member.user_id).where(Member.conversation_id == conversation_id)))
        .scalars()
        .all()
    )
    receipt = {"conversation_id": conversation_id, "user_id": user_id, "message_id": message_id}
    deliveries = await append(tx, [(uid, "read", receipt) for uid in members])
    return {"conversation_id": conversation_id, "last_read": message_id}, deliveries


async def require_member(tx: AsyncSession, user_id: int, conversation_id: int) -> Member:
    member = await tx.get(Member, (conversation_id, user_id))
    if member is None:
        # Same answer whether the conversation exists or not: ids reveal nothing.
        raise ApiError(404, "conversation_not_found", "No such conversation.")
    return member
