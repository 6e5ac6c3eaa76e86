"""bench.population: bystanders written into the database are users as the API leaves them."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bench.population import add_bystanders
from chatcore.models import User
from tests.backends import REAL_DATABASE_URL

pytestmark = pytest.mark.skipif(
    not REAL_DATABASE_URL, reason="PostgreSQL only, as bench.population is"
)


async def test_bystanders_are_pairs_of_friends_who_can_message_each_other(chat):
    await add_bystanders(chat.db.url, 7)
    async with chat.db.transaction() as tx:
        ids = sorted((await tx.scalars(select(User.id))).all())
    assert len(ids) == 6  # rounded down to pairs
    low, high = ids[:2]
    message, created = await chat.send(low, {"to": high, "body": "hi", "client_id": "b1"})
    assert created
    events, _ = await chat.events(high, 0)
    assert [json.loads(e.data)["message"]["body"] for e in events] == ["hi"]
    listed = await chat.conversations(low)
    assert [c["with"]["id"] for c in listed] == [high]
    assert listed[0]["id"] == message["conversation_id"]
    # Ids came from the table's own sequence: registering after them still works.
    registered = await chat.register({"username": "after_them", "password": "password1"})
    assert registered["id"] > ids[-1]
