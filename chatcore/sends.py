"""The send path: storing a batch of messages, without the ORM.

This is chatcore's hot path (issue 5). Profiles of the ORM version showed the time going
into round trips to the database and the ORM's per-statement machinery, not into the
statements' own work. On PostgreSQL the whole batch is one statement given to asyncpg
itself (chatcore.send_statement). On SQLite, which has no data-modifying CTEs, each
step is one statement for the whole batch, in SQLAlchemy Core, in one transaction:

1. the direct conversations of the friend pairs with their members and usernames, and
   the friendship check, in one join (the room sends' members in one more): the
   recipients, the membership check and the sender's name at once;
2. INSERT ... ON CONFLICT DO NOTHING RETURNING for the messages: a retried client_id
   finds its first message instead of raising (idempotent on (sender, client_id));
3. the events and outbox rows, and the deletion of the outbox rows of events published
   since the last batch (chatcore.eventlog.append_rows: seqs under row locks taken in
   id order).

Both give each request a Placed; `outcomes` answers from those, the same way for both.

No marker is moved here: a conversation's newest message, and the sender's read marker
(sending counts as reading), are looked up when conversations are listed
(chatcore.messaging.read_up_to). Moving them took two more round trips per batch and
locked each conversation's row, so sends to one room waited on each other.

longtail.batching batches concurrent sends so one transaction carries many; a batch
of one is an ordinary send. Problems with one send (not a friend, client_id reused) are
that send's answer only; the rest of the batch goes ahead. Friends without a direct
conversation (from before accepting created it) stop the batch (MissingConversations):
the caller makes the conversations through the ORM, then runs the batch again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, Table, and_, bindparam, select, tuple_
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import sqlite

from chatcore import friends, send_statement
from chatcore.db import Tx
from chatcore.eventlog import Delivery, append_rows
from chatcore.messaging import message_dict
from chatcore.models import Conversation, Friendship, Member, Message, User, utcnow
from chatcore.send_statement import Placed
from longtail.errors import ApiError, bad_request
from longtail.validate import field_int, field_str

MAX_CLIENT_ID = 64

MESSAGES = cast(Table, Message.__table__)
CONVERSATIONS = cast(Table, Conversation.__table__)
MEMBERS = cast(Table, Member.__table__)
FRIENDSHIPS = cast(Table, Friendship.__table__)
USERS = cast(Table, User.__table__)

# A send's answer: (message, created), or the error that is this send's alone.
Outcome = tuple[dict[str, Any], bool] | ApiError


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A validated send: to a friend (`to`) or to a room (`conversation_id`)."""

    sender_id: int
    text: str
    client_id: str
    to: int | None = None
    conversation_id: int | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.sender_id, self.client_id)


def parse(sender_id: int, body: dict[str, Any], max_chars: int) -> SendRequest:
    """Check what needs no database, before the send joins a batch."""
    text = field_str(body, "body")
    client_id = field_str(body, "client_id", max_len=MAX_CLIENT_ID)
    if not client_id:
        raise bad_request("'client_id' must not be empty.", "invalid_field")
    if not text.strip():
        raise bad_request("A message needs some text.", "empty_message")
    if len(text) > max_chars:
        raise ApiError(413, "message_too_long", f"A message is at most {max_chars} characters.")
    if body.get("conversation_id") is not None:
        return SendRequest(sender_id, text, client_id, None, field_int(body, "conversation_id"))
    return SendRequest(sender_id, text, client_id, field_int(body, "to"), None)


def not_friend() -> ApiError:
    return ApiError(403, "not_friend", "You can only message your friends.")


def no_conversation() -> ApiError:
    # Same answer whether the conversation exists or not: ids reveal nothing.
    return ApiError(404, "conversation_not_found", "No such conversation.")


def reused() -> ApiError:
    return ApiError(
        409, "client_id_reused", "This client_id was already used for a different message."
    )


class MissingConversations(Exception):
    """Friends without their direct conversation: the caller makes them, then retries."""

    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        super().__init__(f"{len(pairs)} friend pair(s) without a direct conversation")
        self.pairs = pairs


async def store(
    tx: Tx, requests: list[SendRequest], published: Sequence[tuple[int, int]] = ()
) -> tuple[list[Outcome], list[Delivery]]:
    """Store the batch's messages and their members' events; one outcome per request.

    `published`: outbox rows to delete along (chatcore.eventlog.append_rows). On
    PostgreSQL `tx` need not be a transaction: the batch is one statement
    (chatcore.send_statement), and the look-up of retried sends' first messages reads
    only committed rows.
    """
    now = utcnow()
    if tx.postgres:
        placed, deliveries = await send_statement.store(tx, requests, now, published)
        missing = {p.pair for p in placed if p.pair is not None and p.conversation_id is None}
        if missing:
            raise MissingConversations(sorted(missing))
    else:
        placed, deliveries = await store_in_steps(tx, requests, now, published)
    return await outcomes(tx, requests, placed, now), deliveries


async def store_in_steps(
    tx: Tx, requests: list[SendRequest], now: datetime, published: Sequence[tuple[int, int]]
) -> tuple[list[Placed], list[Delivery]]:
    """SQLite's way (send_statement's steps, a statement each, for the whole batch)."""
    targets, members = await destinations(tx, requests)
    placed: list[Placed] = []
    fresh: dict[tuple[int, str], int] = {}  # key -> index of its first request
    for i, (request, target) in enumerate(zip(requests, targets, strict=True)):
        if isinstance(target, ApiError):
            placed.append(Placed(None))
        elif request.sender_id not in members.get(target, {}):
            # A room the sender is not in (same answer as a room that does not exist).
            placed.append(Placed(target))
        else:
            placed.append(Placed(target, members[target][request.sender_id]))
            fresh.setdefault(request.key, i)
    ids = await insert_messages(tx, [(requests[i], targets[i], now) for i in fresh.values()])
    items: list[tuple[int, str, dict[str, Any]]] = []
    for key, i in fresh.items():
        if key in ids:
            placed[i] = done = Placed(placed[i].conversation_id, placed[i].username, ids[key])
            message = new_message(requests[i], done, now)
            recipients = members[message["conversation_id"]]
            items += [(uid, "message", {"message": message}) for uid in recipients]
    return placed, await append_rows(tx, items, published)


async def outcomes(
    tx: Tx, requests: list[SendRequest], placed: list[Placed], now: datetime
) -> list[Outcome]:
    """Each request's answer: its refusal, its new message, or (a retried client_id) the
    message stored first, in this batch or an earlier one."""
    answers: list[Outcome | None] = []
    stored: dict[tuple[int, str], dict[str, Any]] = {}
    for request, where in zip(requests, placed, strict=True):
        if where.conversation_id is None:
            answers.append(not_friend())
        elif where.username is None:
            # A room the sender is not in (same answer as a room that does not exist).
            answers.append(no_conversation())
        elif where.message_id is not None:
            message = new_message(request, where, now)
            stored[request.key] = message
            answers.append((message, True))
        else:
            answers.append(None)
    retried = [i for i, answer in enumerate(answers) if answer is None]
    keys = {requests[i].key for i in retried} - stored.keys()
    stored.update(await earlier_messages(tx, sorted(keys)))
    for i in retried:
        target = cast(int, placed[i].conversation_id)
        answers[i] = retry_of(stored[requests[i].key], requests[i], target)
    # Every request got its answer in one of the two loops above.
    return cast(list[Outcome], answers)


def new_message(request: SendRequest, where: Placed, now: datetime) -> dict[str, Any]:
    sender = {"id": request.sender_id, "username": where.username}
    return message_dict(
        cast(int, where.message_id),
        cast(int, where.conversation_id),
        sender,
        request.text,
        request.client_id,
        now,
    )


def retry_of(stored: dict[str, Any], request: SendRequest, target: int) -> Outcome:
    """A repeated client_id: the first message again, if it is the same message."""
    if stored["body"] != request.text or stored["conversation_id"] != target:
        return reused()
    return stored, False


Members = dict[int, dict[int, str]]  # conversation id -> {member id: username}


async def destinations(tx: Tx, requests: list[SendRequest]) -> tuple[list[int | ApiError], Members]:
    """Each request's conversation (or why it has none), and those conversations' members.

    One statement for all the direct sends and one for all the room sends.
    """
    pairs = {friends.pair(r.sender_id, r.to) for r in requests if r.to not in (None, r.sender_id)}
    direct, members = await direct_conversations(tx, pairs)
    rooms = {r.conversation_id for r in requests if r.conversation_id is not None}
    members.update(await conversation_members(tx, (rooms | set(direct.values())) - set(members)))
    result: list[int | ApiError] = []
    for r in requests:
        if r.conversation_id is not None:
            result.append(r.conversation_id)
        elif r.to is not None and r.to != r.sender_id and friends.pair(r.sender_id, r.to) in direct:
            result.append(direct[friends.pair(r.sender_id, r.to)])
        else:
            result.append(not_friend())
    return result, members


def _direct_query() -> Any:
    """SQLite's: the accepted friendships among the pairs, their direct conversations
    (NULL where there is none yet), its members and their names."""
    f, c, m, u = FRIENDSHIPS.c, CONVERSATIONS.c, MEMBERS.c, USERS.c
    key = sql_cast(f.user_low, String) + ":" + sql_cast(f.user_high, String)
    return (
        select(f.user_low, f.user_high, c.id, m.user_id, u.username)
        .select_from(FRIENDSHIPS)
        .outerjoin(
            CONVERSATIONS,
            and_(c.direct_key == key, c.direct_key.in_(bindparam("keys", expanding=True))),
        )
        .outerjoin(MEMBERS, m.conversation_id == c.id)
        .outerjoin(USERS, u.id == m.user_id)
        .where(
            f.status == friends.ACCEPTED,
            tuple_(f.user_low, f.user_high).in_(bindparam("pairs", expanding=True)),
        )
    )


# The hot statements are built once: building an expression costs more Python than
# executing its cached compiled form (the profile of a lone send showed it).
DIRECT_QUERY = _direct_query()
MEMBERS_QUERY = (
    select(MEMBERS.c.conversation_id, MEMBERS.c.user_id, USERS.c.username)
    .join_from(MEMBERS, USERS, USERS.c.id == MEMBERS.c.user_id)
    .where(MEMBERS.c.conversation_id.in_(bindparam("ids", expanding=True)))
)


async def direct_conversations(
    tx: Tx, pairs: set[tuple[int, int]]
) -> tuple[dict[tuple[int, int], int], Members]:
    """The friend pairs' direct conversations and their members, in one statement.

    Pairs that are not (accepted) friends are missing from the answer; friends without
    a conversation yet raise MissingConversations. Both sides of the join are bounded by
    an index lookup (the pairs, the conversations' keys), so its cost does not grow with
    the tables.
    """
    if not pairs:
        return {}, {}
    keys = sorted(f"{low}:{high}" for low, high in pairs)
    rows = (await tx.core.execute(DIRECT_QUERY, {"pairs": sorted(pairs), "keys": keys})).all()
    direct: dict[tuple[int, int], int] = {}
    members: Members = {}
    missing: list[tuple[int, int]] = []
    for low, high, conversation_id, user_id, username in rows:
        if conversation_id is None:
            missing.append((low, high))
            continue
        direct[(low, high)] = conversation_id
        members.setdefault(conversation_id, {})[user_id] = username
    if missing:
        raise MissingConversations(sorted(missing))
    return direct, members


async def conversation_members(tx: Tx, conversation_ids: set[int]) -> Members:
    """Members (with usernames) of every one of these conversations, in one statement."""
    if not conversation_ids:
        return {}
    rows = (await tx.core.execute(MEMBERS_QUERY, {"ids": sorted(conversation_ids)})).all()
    result: Members = {}
    for conversation_id, user_id, username in rows:
        result.setdefault(conversation_id, {})[user_id] = username
    return result


# ON CONFLICT is dialect syntax; this is SQLite's. It takes a list of rows.
INSERT_MESSAGE_SQLITE = (
    sqlite.insert(MESSAGES)
    .on_conflict_do_nothing(index_elements=["sender_id", "client_id"])
    .returning(MESSAGES.c.id, MESSAGES.c.sender_id, MESSAGES.c.client_id)
)


async def insert_messages(
    tx: Tx, rows: list[tuple[SendRequest, int | ApiError, datetime]]
) -> dict[tuple[int, str], int]:
    """Insert the messages; key -> new id for those whose (sender, client_id) was free.

    ON CONFLICT DO NOTHING rather than catching an IntegrityError: a retry racing its
    first attempt waits for it, then finds its row, with no aborted transaction.
    """
    if not rows:
        return {}
    values = [
        {
            "conversation_id": target,
            "sender_id": r.sender_id,
            "client_id": r.client_id,
            "body": r.text,
            "created_at": now,
        }
        for r, target, now in rows
    ]
    inserted = await tx.core.execute(INSERT_MESSAGE_SQLITE, values)
    return {(sender, client): message_id for message_id, sender, client in inserted}


EARLIER_PG = (
    "SELECT m.id, m.conversation_id, m.sender_id, u.username, m.body, m.client_id,"
    " m.created_at FROM unnest($1::bigint[], $2::varchar[]) AS k(sender_id, client_id)"
    " JOIN messages AS m ON m.sender_id = k.sender_id AND m.client_id = k.client_id"
    " JOIN users AS u ON u.id = m.sender_id"
)


async def earlier_messages(
    tx: Tx, keys: list[tuple[int, str]]
) -> dict[tuple[int, str], dict[str, Any]]:
    """The messages already stored under these (sender, client_id) keys."""
    if not keys:
        return {}
    if tx.postgres:
        senders, clients = zip(*keys, strict=True)
        rows = await tx.rows(EARLIER_PG, list(senders), list(clients))
    else:
        m, u = MESSAGES.c, USERS.c
        query = (
            select(
                m.id, m.conversation_id, m.sender_id, u.username, m.body, m.client_id, m.created_at
            )
            .join_from(MESSAGES, USERS, u.id == m.sender_id)
            .where(tuple_(m.sender_id, m.client_id).in_(keys))
        )
        rows = (await tx.core.execute(query)).all()
    return {
        (sender_id, client_id): message_dict(
            message_id,
            conversation_id,
            {"id": sender_id, "username": username},
            body,
            client_id,
            created_at,
        )
        for message_id, conversation_id, sender_id, username, body, client_id, created_at in rows
    }
