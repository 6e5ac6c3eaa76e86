"""Each user's ordered event log: gap-free per-user seqs, written with the outbox.

Design rule: a durable event gets the recipient's next seq in the same transaction that
stores what it describes. The seq comes from `users.last_seq`, bumped by one UPDATE that
first locks the rows in id order (see reserve_seqs) and holds them until commit, so two
transactions touching the same pair cannot deadlock.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore.db import Tx
from chatcore.models import Event as EventRow
from chatcore.models import Outbox, User, utcnow
from longtail.errors import ApiError
from longtail.wire import Event

EVENTS = cast(Table, EventRow.__table__)
OUTBOX = cast(Table, Outbox.__table__)
USERS = cast(Table, User.__table__)


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
    """Append (user_id, type, body) events, keeping their order per user.

    Pending ORM changes are flushed first: the rows below go straight to the connection,
    past the session's autoflush.
    """
    await tx.flush()
    return await append_rows(Tx(await tx.connection()), items)


async def append_rows(
    tx: Tx,
    items: list[tuple[int, str, dict[str, Any]]],
    published: Sequence[tuple[int, int]] = (),
) -> list[Delivery]:
    """`append` without the ORM, in two statements on PostgreSQL however many events and
    users (on SQLite one per table): this runs for every send, and the ORM's unit of work
    costs more CPU than the statements themselves.

    `published`: outbox rows of earlier events that Redis has taken, deleted here too;
    on PostgreSQL by the statement that stores the new events (a round trip less per
    send batch).
    """
    per_user: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for user_id, type_, body in items:
        per_user[user_id].append((type_, body))
    if not per_user:
        await forget(tx, published)
        return []
    last = await reserve_seqs(tx, {u: len(events) for u, events in per_user.items()})
    deliveries: list[Delivery] = []
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for user_id in sorted(per_user):
        events = per_user[user_id]
        for seq, (type_, body) in enumerate(events, start=last[user_id] - len(events) + 1):
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
    if tx.postgres:
        await tx.rows(
            APPEND_PG,
            [r["user_id"] for r in rows],
            [r["seq"] for r in rows],
            [r["type"] for r in rows],
            [r["payload"] for r in rows],
            now,
            [user_id for user_id, _ in published],
            [seq for _, seq in published],
        )
        return deliveries
    await forget(tx, published)
    await tx.core.execute(INSERT_EVENTS, rows)
    await tx.core.execute(
        INSERT_OUTBOX,
        [{"user_id": r["user_id"], "seq": r["seq"], "created_at": now} for r in rows],
    )
    return deliveries


async def forget(tx: Tx, rows: Sequence[tuple[int, int]]) -> None:
    """Delete these (user_id, seq) outbox rows: their events are published.

    Not through an ORM session: its bulk-delete machinery took a twentieth of chatcore's
    CPU in the send path's profile.
    """
    if not rows:
        return
    if tx.postgres:
        await tx.rows(FORGET_PG, [user_id for user_id, _ in rows], [seq for _, seq in rows])
    else:
        await tx.core.execute(FORGET, {"rows": list(rows)})


async def reserve_seqs(tx: Tx, counts: dict[int, int]) -> dict[int, int]:
    """Advance each user's `last_seq` by `counts[user]`; returns the new values.

    One statement, however many users: UPDATE ... FROM (SELECT ... ORDER BY id FOR NO
    KEY UPDATE) ... RETURNING. The sub-select locks the rows in id order before any is
    changed, so two transactions touching an overlapping set of users queue up instead
    of deadlocking, and each holds its users until commit, which makes the seqs
    gap-free. NO KEY UPDATE, the lock an UPDATE of a non-key column takes anyway, not
    FOR UPDATE: that one also waits for the KEY SHARE locks other transactions' foreign
    keys hold on users (a message's sender, an event's user), which deadlocks two
    writers that each sent to the other. SQLite has no row locks (SQLAlchemy drops the
    clause there): BEGIN IMMEDIATE already serializes its writers.
    """
    ids = sorted(counts)
    if tx.postgres:
        found = await tx.rows(RESERVE_PG, ids, [counts[u] for u in ids])
        new = {user_id: last_seq for user_id, last_seq in found}
        if len(new) != len(ids):
            raise ApiError(404, "user_not_found", "No such user.")
        return new
    steps = set(counts.values())
    if len(steps) == 1:
        # The usual case (one event each), with a statement built once.
        rows = await tx.core.execute(RESERVE_SAME, {"ids": ids, "step": steps.pop()})
    else:
        rows = await tx.core.execute(_reserve(case(counts, value=USERS.c.id)), {"ids": ids})
    new = {user_id: last_seq for user_id, last_seq in rows}
    if len(new) != len(ids):
        raise ApiError(404, "user_not_found", "No such user.")
    return new


def _reserve(step: Any) -> Any:
    locked = (
        select(USERS.c.id)
        .where(USERS.c.id.in_(bindparam("ids", expanding=True)))
        .order_by(USERS.c.id)
        .with_for_update(key_share=True)
        .subquery("locked")
    )
    return (
        update(USERS)
        .where(USERS.c.id == locked.c.id)
        .values(last_seq=USERS.c.last_seq + step)
        .returning(USERS.c.id, USERS.c.last_seq)
    )


# Built once: building an expression costs more Python than running its cached form.
RESERVE_SAME = _reserve(bindparam("step"))
INSERT_EVENTS = insert(EVENTS)
INSERT_OUTBOX = insert(OUTBOX)
FORGET = delete(OUTBOX).where(
    tuple_(OUTBOX.c.user_id, OUTBOX.c.seq).in_(bindparam("rows", expanding=True))
)

# PostgreSQL's versions take arrays, so each is one statement text whatever the batch
# (an IN list or a VALUES list of N rows is a new statement for every N, prepared again
# on each pooled connection, whose cache holds 100). The same row locks in id order as
# _reserve, for any mix of counts; the events, their outbox rows and the deletion of
# published ones in one statement (different rows: the published are committed ones).
RESERVE_PG = (
    "UPDATE users SET last_seq = users.last_seq + locked.step"
    " FROM (SELECT u.id, wanted.step FROM users AS u"
    " JOIN unnest($1::bigint[], $2::bigint[]) AS wanted(id, step)"
    " ON wanted.id = u.id ORDER BY u.id FOR NO KEY UPDATE OF u) AS locked"
    " WHERE users.id = locked.id RETURNING users.id, users.last_seq"
)
FORGET_PG = (
    "DELETE FROM outbox USING unnest($1::bigint[], $2::bigint[]) AS published(user_id, seq)"
    " WHERE outbox.user_id = published.user_id AND outbox.seq = published.seq"
)
APPEND_PG = (
    "WITH new AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::varchar[], $4::text[])"
    " AS e(user_id, seq, type, payload)),"
    " published AS (DELETE FROM outbox USING unnest($6::bigint[], $7::bigint[]) AS p(user_id, seq)"
    " WHERE outbox.user_id = p.user_id AND outbox.seq = p.seq),"
    " stored AS (INSERT INTO events (user_id, seq, type, payload, created_at)"
    " SELECT user_id, seq, type, payload, $5::timestamptz FROM new)"
    " INSERT INTO outbox (user_id, seq, created_at) SELECT user_id, seq, $5::timestamptz FROM new"
)


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
