"""A batch of sends stored by one PostgreSQL statement, in one round trip (issue 5).

Sent one by one, a lone send's statements were BEGIN, the destinations, the messages,
the `seq` reservation, the events with their outbox rows, and COMMIT: six round trips,
each a wake-up and a socket write on both sides. At light load, one send per batch,
chatcore spent 1.9 ms of CPU per send against 0.35 ms at saturation, and a profile put
a quarter of its samples in those socket writes. Here the four statements are the
parts of one, which PostgreSQL runs as its own transaction: no BEGIN or COMMIT is sent.

- `dest`: each request's conversation: a room, or the direct conversation of an
  accepted friendship (its pair, so friends without one can be told apart: the caller
  makes it, then runs the batch again; the statement then stores nothing);
- `allowed`: the requests whose sender is a member there, with the sender's name;
- `fresh`: the first of those per (sender, client_id); `inserted` stores them, ON
  CONFLICT DO NOTHING, so a retried client_id finds its first message (looked up after);
- `fan`: one event per member of each new message's conversation, numbered per member
  in request order;
- `reserved`: the members' `users.last_seq` moved on, under row locks taken in id order
  (chatcore.eventlog.reserve_seqs says why the order and the lock strength); it needs
  all of `fan`, so the locks come after the messages' insert, as they did;
- `event`: the seqs and the payloads, built here from the JSON the caller encoded
  (`tail`) and the numbers only the database knows; stored with their outbox rows, and
  returned, so what is published is byte for byte what is stored;
- `forgotten`: the outbox rows of events already published (chatcore.outbox).

The sub-statements share one snapshot and PostgreSQL picks their order, so each gets
what it needs from the others through their RETURNING, and none reads what another
writes (`allowed` reads the users' names, `reserved` moves their seqs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast

from chatcore import friends
from chatcore.db import Tx
from chatcore.eventlog import Delivery
from chatcore.messaging import message_dict
from longtail.wire import Event

if TYPE_CHECKING:
    from chatcore.sends import SendRequest


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one request of the batch went.

    `conversation_id` is None for a direct send to someone who is not a friend (or
    friends without their direct conversation: `pair` is set then); `username` (the
    sender's) is None when the sender is not a member; `message_id` is set when this
    request stored its message, not when an earlier one with its client_id did.
    """

    conversation_id: int | None
    username: str | None = None
    message_id: int | None = None
    pair: tuple[int, int] | None = None


SEND_PG = (
    "WITH req AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[],"
    " $4::varchar[], $5::text[], $6::text[]) WITH ORDINALITY"
    " AS r(sender_id, to_id, room_id, client_id, body, tail, i)),"
    " dest AS (SELECT r.*, coalesce(r.room_id, c.id) AS conversation_id,"
    " f.user_low AS low, f.user_high AS high FROM req AS r"
    " LEFT JOIN friendships AS f ON r.room_id IS NULL AND r.to_id <> r.sender_id"
    " AND f.user_low = least(r.sender_id, r.to_id)"
    " AND f.user_high = greatest(r.sender_id, r.to_id) AND f.status = $8"
    " LEFT JOIN conversations AS c ON c.direct_key = f.user_low::text || ':' || f.user_high::text),"
    " allowed AS (SELECT d.*, u.username FROM dest AS d"
    " JOIN conversation_members AS m"
    " ON m.conversation_id = d.conversation_id AND m.user_id = d.sender_id"
    " JOIN users AS u ON u.id = d.sender_id),"
    " fresh AS (SELECT DISTINCT ON (sender_id, client_id) * FROM allowed"
    " WHERE NOT EXISTS (SELECT FROM dest WHERE low IS NOT NULL AND conversation_id IS NULL)"
    " ORDER BY sender_id, client_id, i),"
    " inserted AS (INSERT INTO messages (conversation_id, sender_id, client_id, body, created_at)"
    " SELECT conversation_id, sender_id, client_id, body, $7::timestamptz FROM fresh ORDER BY i"
    " ON CONFLICT (sender_id, client_id) DO NOTHING RETURNING id, sender_id, client_id),"
    " message AS (SELECT f.i, f.conversation_id, n.id,"
    " '{\"id\":' || n.id || ',\"conversation_id\":' || f.conversation_id"
    ' || \',"sender":{"id":\' || f.sender_id || \',"username":\' || to_json(f.username)::text'
    " || '},' || f.tail AS json"
    " FROM inserted AS n JOIN fresh AS f"
    " ON f.sender_id = n.sender_id AND f.client_id = n.client_id),"
    " fan AS (SELECT m.user_id, g.json,"
    " row_number() OVER (PARTITION BY m.user_id ORDER BY g.i) AS k"
    " FROM message AS g JOIN conversation_members AS m ON m.conversation_id = g.conversation_id),"
    " reserved AS (UPDATE users SET last_seq = users.last_seq + locked.n"
    " FROM (SELECT u.id, w.n FROM users AS u"
    " JOIN (SELECT user_id, count(*) AS n FROM fan GROUP BY user_id) AS w ON w.user_id = u.id"
    " ORDER BY u.id FOR NO KEY UPDATE OF u) AS locked"
    " WHERE users.id = locked.id RETURNING users.id, users.last_seq - locked.n AS base),"
    " event AS (SELECT f.user_id, r.base + f.k AS seq,"
    ' \'{"seq":\' || (r.base + f.k) || \',"type":"message","message":\' || f.json || \'}\''
    " AS payload FROM fan AS f JOIN reserved AS r ON r.id = f.user_id),"
    " forgotten AS (DELETE FROM outbox USING unnest($9::bigint[], $10::bigint[])"
    " AS p(user_id, seq) WHERE outbox.user_id = p.user_id AND outbox.seq = p.seq),"
    " stored AS (INSERT INTO events (user_id, seq, type, payload, created_at)"
    " SELECT user_id, seq, 'message', payload, $7::timestamptz FROM event),"
    " queued AS (INSERT INTO outbox (user_id, seq, created_at)"
    " SELECT user_id, seq, $7::timestamptz FROM event)"
    " SELECT d.i, d.conversation_id, d.low, d.high, a.username, g.id,"
    " NULL::bigint, NULL::bigint, NULL::text"
    " FROM dest AS d LEFT JOIN allowed AS a ON a.i = d.i LEFT JOIN message AS g ON g.i = d.i"
    " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, e.user_id, e.seq, e.payload"
    " FROM event AS e"
)


def tail(request: SendRequest, now: datetime) -> str:
    """The message's JSON after its sender, as chatcore.messaging.message_dict has it:
    encoded here, so the statement only splices in the numbers and the sender's name."""
    known = message_dict(0, 0, {}, request.text, request.client_id, now)
    rest = {key: known[key] for key in ("body", "client_id", "created_at")}
    return json.dumps(rest, separators=(",", ":"), ensure_ascii=False)[1:]


async def store(
    tx: Tx,
    requests: Sequence[SendRequest],
    now: datetime,
    published: Sequence[tuple[int, int]] = (),
) -> tuple[list[Placed], list[Delivery]]:
    """Run the statement: where each request went, and the events to publish."""
    rows = await tx.rows(
        SEND_PG,
        [r.sender_id for r in requests],
        [r.to for r in requests],
        [r.conversation_id for r in requests],
        [r.client_id for r in requests],
        [r.text for r in requests],
        [tail(r, now) for r in requests],
        now,
        friends.ACCEPTED,
        [user_id for user_id, _ in published],
        [seq for _, seq in published],
    )
    placed: list[Placed | None] = [None] * len(requests)
    events: list[tuple[int, int, str]] = []
    for i, conversation_id, low, high, username, message_id, user_id, seq, payload in rows:
        if i is None:
            events.append((user_id, seq, payload))
        else:
            pair = (low, high) if low is not None else None
            placed[i - 1] = Placed(conversation_id, username, message_id, pair)
    deliveries = [
        Delivery(user_id, Event(seq, payload.encode())) for user_id, seq, payload in sorted(events)
    ]
    # `dest` has one row per request: a friendship and a direct conversation are unique.
    return cast(list[Placed], placed), deliveries
