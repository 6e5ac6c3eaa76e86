"""Fixtures of the hostile-input tests: three users, one of them an outsider."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from longtail.settings import Settings
from tests.client import Client
from tests.conftest import Stack
from tests.waiting import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A short unsubscribe grace: users' channels (and presence) settle fast after a test."""
    return settings.with_(unsubscribe_grace=0.05)


@pytest.fixture
async def stack(stack: Stack) -> AsyncIterator[Stack]:
    """The shared stack, torn down only once every presence announcement has finished.

    Many of these tests drop connections at their very end; the gateway then announces
    the user offline to chatcore after the grace period. Stopping chatcore while that
    request is in its database transaction would leak the connection (a ResourceWarning
    at some later garbage collection, failing an unrelated test).
    """
    yield stack

    def quiet() -> bool:
        return all(g.hub.channel_count() == 0 and not g.presence._pending for g in stack.gateways)

    await eventually(quiet, deadline=5, what="presence settled before the stack stops")


@dataclass
class Trio:
    """alice is friends with bob and with carol; carol is in nothing of alice and bob's.

    Both bob and carol have exactly two events (the friendship), so their cursors and
    seqs collide: a cursor or `Last-Event-ID` "borrowed" from bob means something in
    carol's own stream too, which is what an attacker would try.
    """

    alice: Client
    bob: Client
    carol: Client
    alice_bob: int  # their direct conversation
    alice_carol: int


@pytest.fixture
async def trio(new_client: Callable[..., Client]) -> Trio:
    alice = await new_client(0).signup(f"alice{uuid.uuid4().hex[:6]}")
    bob = await new_client(1).signup(f"bob{uuid.uuid4().hex[:6]}")
    carol = await new_client(1).signup(f"carol{uuid.uuid4().hex[:6]}")
    alice_bob = await alice.befriend(bob)
    alice_carol = await alice.befriend(carol)
    bob.cursor = carol.cursor = 2
    return Trio(alice, bob, carol, alice_bob, alice_carol)
