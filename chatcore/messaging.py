"""Direct messages and rooms: conversation lists with unread counts, paged history, read
markers. Storing a send is chatcore.sends (the hot path)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from chatcore.eventlog import Delivery, append
from chatcore.models import Conversation, Member, Message, User
from chatcore.sessions import aware
from longtail.errors import ApiError, bad_request
from longtail.validate import field_int

HISTORY_PAGE = 50
HISTORY_MAX = 200


def message_json(message: Message, sender: User) -> dict[str, Any]:
    return message_dict(
        message.id,
        message.conversation_id,
        {"id": sender.id, "username": sender.username},
        message.body,
        message.client_id,
        message.created_at,
    )


def message_dict(
    message_id: int,
    conversation_id: int,
    sender: dict[str, Any],
    body: str,
    client_id: str,
    created_at: datetime,
) -> dict[str, Any]:
    """A message as the API and its events show it (sends: see chatcore.sends)."""
    return {
        "id": message_id,
        "conversation_id": conversation_id,
        "sender": sender,
        "body": body,
        "client_id": client_id,
        "created_at": aware(created_at).isoformat().replace("+00:00", "Z"),
    }


async def conversations(tx: AsyncSession, user_id: int) -> list[dict[str, Any]]:
    """The user's conversations, newest activity first, with unread counts.

    Direct ones say who they are `with`; rooms have a `name` and a member count. The
    newest message and what the user has read are looked up here, from the messages'
    (conversation_id, id) index, rather than kept up to date by every send (see
    `read_up_to`).
    """
    me = aliased(Member)
    newest = (
        select(func.max(Message.id))
        .where(Message.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
    )
    read = read_up_to(me, user_id)
    unread = (
        select(func.count())
        .where(
            Message.conversation_id == me.conversation_id,
            Message.id > read,
            Message.sender_id != user_id,
        )
        .correlate(me)
        .scalar_subquery()
    )
    last = aliased(Message)
    sender = aliased(User)
    rows = (
        await tx.execute(
            select(Conversation, last, sender, unread)
            .join(me, and_(me.conversation_id == Conversation.id, me.user_id == user_id))
            .outerjoin(last, last.id == newest)
            .outerjoin(sender, sender.id == last.sender_id)
            .order_by(func.coalesce(last.id, 0).desc(), Conversation.id.desc())
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
    me = aliased(Member)
    found = (
        await tx.execute(
            select(me, read_up_to(me, user_id)).where(
                me.conversation_id == conversation_id, me.user_id == user_id
            )
        )
    ).first()
    if found is None:
        raise not_a_member()
    member, read = found
    newest = (
        await tx.execute(
            select(func.max(Message.id)).where(Message.conversation_id == conversation_id)
        )
    ).scalar() or 0
    if message_id > newest:
        raise bad_request("That message is not in this conversation.", "invalid_message_id")
    if message_id <= read:
        return {"conversation_id": conversation_id, "last_read": read}, []
    member.last_read_message_id = message_id
    members = (
        (await tx.execute(select(Member.user_id).where(Member.conversation_id == conversation_id)))
        .scalars()
        .all()
    )
    receipt = {"conversation_id": conversation_id, "user_id": user_id, "message_id": message_id}
    deliveries = await append(tx, [(uid, "read", receipt) for uid in members])
    return {"conversation_id": conversation_id, "last_read": message_id}, deliveries


def read_up_to(member: Any, user_id: int) -> Any:
    """How far `member` (the user's row, aliased) has read: their marker, or their own
    newest message past it, since sending counts as reading.

    Looked up rather than stored by each send: moving two markers took two of the send
    transaction's round trips to PostgreSQL, and locked the conversation's row, which
    every sender to a room then waited on. Only messages past the marker are looked at.
    """
    mine = (
        select(func.max(Message.id))
        .where(
            Message.conversation_id == member.conversation_id,
            Message.sender_id == user_id,
            Message.id > member.last_read_message_id,
        )
        .correlate(member)
        .scalar_subquery()
    )
    return func.coalesce(mine, member.last_read_message_id)


async def require_member(tx: AsyncSession, user_id: int, conversation_id: int) -> Member:
    member = await tx.get(Member, (conversation_id, user_id))
    if member is None:
        raise not_a_member()
    return member


def not_a_member() -> ApiError:
    # Same answer whether the conversation exists or not: ids reveal nothing.
    return ApiError(404, "conversation_not_found", "No such conversation.")
