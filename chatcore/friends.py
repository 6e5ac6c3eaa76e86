"""Friendships as in a chat product: a request, then an accept (or a decline/removal).

Accepting creates the pair's direct conversation, so sending never races to create it.
Every change is a durable event for both people, so all their tabs stay in step.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore import accounts
from chatcore.eventlog import Delivery, append
from chatcore.models import Conversation, Friendship, Member, User
from longtail.errors import ApiError, bad_request
from longtail.validate import field_str

PENDING = "pending"
ACCEPTED = "accepted"


def pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


async def find(tx: AsyncSession, a: int, b: int) -> Friendship | None:
    low, high = pair(a, b)
    return await tx.get(Friendship, (low, high))


async def are_friends(tx: AsyncSession, a: int, b: int) -> bool:
    row = await find(tx, a, b)
    return row is not None and row.status == ACCEPTED


async def friends_of(tx: AsyncSession, user_ids: list[int]) -> dict[int, list[int]]:
    """Each of these users' friends (accepted), in one statement: a burst of presence
    changes (a gateway's users all gone at once) is one read, not one each."""
    f = Friendship
    rows = await tx.execute(
        select(f.user_low, f.user_high).where(
            f.status == ACCEPTED, or_(f.user_low.in_(user_ids), f.user_high.in_(user_ids))
        )
    )
    wanted = set(user_ids)
    result: dict[int, list[int]] = {user_id: [] for user_id in user_ids}
    for low, high in rows:
        if low in wanted:
            result[low].append(high)
        if high in wanted:
            result[high].append(low)
    return result


async def listing(tx: AsyncSession, user_id: int) -> dict[str, list[dict[str, Any]]]:
    rows = await tx.execute(
        select(Friendship, User)
        .join(
            User,
            or_(
                and_(Friendship.user_low == user_id, User.id == Friendship.user_high),
                and_(Friendship.user_high == user_id, User.id == Friendship.user_low),
            ),
        )
        .order_by(User.username_key)
    )
    result: dict[str, list[dict[str, Any]]] = {"friends": [], "incoming": [], "outgoing": []}
    for friendship, other in rows:
        if friendship.status == ACCEPTED:
            result["friends"].append(accounts.public(other))
        elif friendship.requester_id == user_id:
            result["outgoing"].append(accounts.public(other))
        else:
            result["incoming"].append(accounts.public(other))
    return result


async def request(
    tx: AsyncSession, user_id: int, body: dict[str, Any]
) -> tuple[dict[str, Any], bool, list[Delivery]]:
    """Ask `username` to be friends, or accept when they already asked.

    Returns (result, changed, deliveries); asking again is harmless and changes nothing.
    """
    username = field_str(body, "username", max_len=64)
    me = await tx.get(User, user_id)
    other = await accounts.by_name(tx, username)
    if me is None:
        raise ApiError(401, "unauthorized", "Log in again.")
    if other is None:
        raise ApiError(404, "user_not_found", f"No user is called '{username}'.")
    if other.id == user_id:
        raise bad_request("You cannot befriend yourself.", "self_friend")
    row = await find(tx, user_id, other.id)
    if row is not None and (row.status == ACCEPTED or row.requester_id == user_id):
        return {"status": row.status, "user": accounts.public(other)}, False, []
    if row is None:
        low, high = pair(user_id, other.id)
        tx.add(Friendship(user_low=low, user_high=high, requester_id=user_id, status=PENDING))
        await tx.flush()
        deliveries = await append(
            tx,
            [
                (
                    other.id,
                    "friend_request",
                    {"user": accounts.public(me), "direction": "incoming"},
                ),
                (
                    user_id,
                    "friend_request",
                    {"user": accounts.public(other), "direction": "outgoing"},
                ),
            ],
        )
        return {"status": PENDING, "user": accounts.public(other)}, True, deliveries
    row.status = ACCEPTED
    conversation_id = await direct_conversation(tx, user_id, other.id)
    deliveries = await append(
        tx,
        [
            (
                other.id,
                "friend_accepted",
                {"user": accounts.public(me), "conversation_id": conversation_id},
            ),
            (
                user_id,
                "friend_accepted",
                {"user": accounts.public(other), "conversation_id": conversation_id},
            ),
        ],
    )
    return (
        {"status": ACCEPTED, "user": accounts.public(other), "conversation_id": conversation_id},
        True,
        deliveries,
    )


async def remove(tx: AsyncSession, user_id: int, other_id: int) -> list[Delivery]:
    """Unfriend, decline an incoming request or withdraw an outgoing one."""
    row = await find(tx, user_id, other_id)
    other = await tx.get(User, other_id)
    me = await tx.get(User, user_id)
    if row is None or other is None or me is None:
        raise ApiError(404, "not_friends", "There is no friendship or request with that user.")
    low, high = pair(user_id, other_id)
    await tx.execute(
        delete(Friendship).where(Friendship.user_low == low, Friendship.user_high == high)
    )
    return await append(
        tx,
        [
            (other_id, "friend_removed", {"user": accounts.public(me)}),
            (user_id, "friend_removed", {"user": accounts.public(other)}),
        ],
    )


async def create_direct(
    tx: AsyncSession, pairs: list[tuple[int, int]]
) -> tuple[None, list[Delivery]]:
    """Direct conversations for friend pairs that have none (see chatcore.sends)."""
    for low, high in pairs:
        await direct_conversation(tx, low, high)
    return None, []


async def direct_conversation(tx: AsyncSession, a: int, b: int) -> int:
    """The pair's one direct conversation, created on first need (kept across re-friending)."""
    low, high = pair(a, b)
    key = f"{low}:{high}"
    found = (
        await tx.execute(select(Conversation.id).where(Conversation.direct_key == key))
    ).scalar()
    if found is not None:
        return found
    conversation = Conversation(kind="direct", direct_key=key)
    tx.add(conversation)
    await tx.flush()
    tx.add_all(
        [
            Member(conversation_id=conversation.id, user_id=low),
            Member(conversation_id=conversation.id, user_id=high),
        ]
    )
    await tx.flush()
    return conversation.id
