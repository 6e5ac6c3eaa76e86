"""The work clients' requests started, so that shutdown lets it finish first.

Why: Tornado lets a request's coroutine run on after its connection is closed, and a
gateway that closed Redis and its hop to chatcore under such work lost what the work
was doing (a message in flight got no answer), and a Redis Cluster client used after
close() quietly opened new connections that nobody closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class InFlight:
    """Tasks doing a request's work (a send, a step of a held poll, a handler)."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        # Also the strong reference asyncio does not keep to a task.
        self._tasks: set[asyncio.Future[Any]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run `work` as a task that shutdown waits for."""
        task = asyncio.ensure_future(work)
        self.join(task)
        return task

    def join(self, task: asyncio.Future[Any]) -> None:
        """Count a task started elsewhere (a RequestHandler's, by Tornado)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def settle(self, timeout: float) -> int:
        """Wait up to `timeout` for the work to end, then cancel what is left and wait
        for that too: how many were cancelled."""
        if not self._tasks:
            return 0
        _, late = await asyncio.wait(set(self._tasks), timeout=max(0.0, timeout))
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
        return len(late)
