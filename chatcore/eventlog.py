"""Each user's ordered event log: gap-free per-user seqs, written with the outbox.

Design rule: a durable event gets the recipient's next seq in the same transaction that
stores what it describes. The seq comes from `users.last_seq`, bumped with
UPDATE ... RETURNING, which holds that user's row lock until commit; users are always
locked in id order so two transactions touching the same pair cannot deadlock.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore.models import Event as EventRow
from chatcore.models import Outbox, User, utcnow
from longtail.errors import ApiError
from longtail.wire import Event


@dataclass(frozen=True, slots=True)
class Delivery:
    """A committed event for one user, ready to publish."""

    user_id: int
    event: Event


def encode(seq: int, type_: str, body: dict[str, Any]) -> bytes:
    """The event's one JSON encoding, stored, buffered and delivered byte for byte."""
    return json.dumps(
        {"seq": seq, "type": type_, **body}, separators=(",", ":"), ensure_ascii=False
    ).encode()


async def append(tx: AsyncSession, items: list[tuple[int, str, dict[str, Any]]]) -> list[Delivery]:
    """Append (user_id, type, body) events, keeping their order per user."""
    per_user: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for user_id, type_, body in items:
        per_user[user_id].append((type_, body))
    deliveries: list[Delivery] = []
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for user_id in sorted(per_user):
        events = per_user[user_id]
        last = (
            await tx.execute(
                update(User)
                .where(User.id == user_id)
                .values(last_seq=User.last_seq + len(events))
                .returning(User.last_seq)
            )
        ).scalar_one()
        for seq, (type_, body) in enumerate(events, start=last - len(events) + 1):
            data = encode(seq, type_, body)
            deliveries.append(Delivery(user_id, Event(seq, data)))
            rows.append(
                {
                    "user_id": user_id,
                    "seq": seq,
                    "type": type_,
                    "payload": data.decode(),
                    "created_at": now,
                }
            )
    if rows:
        await tx.execute(insert(EventRow), rows)
        await tx.execute(
            insert(Outbox),
            [{"user_id": r["user_id"], "seq": r["seq"], "created_at": now} for r in rows],
        )
    return deliveries


async def head(tx: AsyncSession, user_id: int) -> int:
    value = (await tx.execute(select(User.last_seq).where(User.id == user_id))).scalar_one_or_none()
    if value is None:
        raise ApiError(404, "user_not_found", "No such user.")
    return value


async def read_after(
    tx: AsyncSession, user_id: int, after: int, limit: int
) -> tuple[list[Event], int]:
    """Events with seq > after, oldest first, and the user's current head.

    A cursor past the head is a client bug (or another user's cursor): a clear 400.
    """
    last = await head(tx, user_id)
    if after > last:
        raise ApiError(
            400,
            "cursor_ahead",
            f"Cursor {after} is ahead of the newest event ({last}); resume from {last}.",
        )
    rows = await tx.execute(
        select(EventRow.seq, EventRow.payload)
        .where(EventRow.user_id == user_id, EventRow.seq > after)
        .order_by(EventRow.seq)
        .limit(limit)
    )
    return [Event(seq, payload.encode()) for seq, payload in rows], last
