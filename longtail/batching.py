"""Self-clocking batches: items that arrive while a batch runs share the next one.

Used three times on the send path (issue 5), where profiles showed the cost going into
trips, not into work per message: chatcore's group commit (a transaction's BEGIN,
statements, COMMIT and fsync are paid once per batch; chatcore.sends stores N messages in
about as many statements as one), the gateway's hop to chatcore (one internal HTTP
request per batch of sends instead of one per send) and its rate checks (one Redis round
trip per batch, gateway.limits).

Nothing waits to fill a batch: an item that finds nothing running starts a batch at
once, so an idle system answers as fast as without batching, and a busy one batches
exactly as much as arrived during the previous trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Enough to absorb a burst, small enough that one batch's statements stay modest.
MAX_BATCH = 64


class Batcher(Generic[T, R]):
    """Runs `run(batch)` for queued items, one batch at a time, in arrival order.

    `run` returns one outcome per item: a result, or an exception for that item's caller
    alone. An exception raised by `run` itself goes to every caller in the batch.

    One batch at a time: for chatcore's group commit, measured against two in flight
    (bench/profile_send.py), two cost a third more CPU per send, in chatcore and in
    PostgreSQL, for no more sends/s.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        # A caller that gives up cancels only its own future: the batch goes ahead (its
        # send may be committed already) and skips the answer nobody waits for.
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    outcomes = await self._run([item for item, _ in batch])
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        except BaseException:
            # Cancelled (shutdown): nobody may wait forever on a batch that will not run.
            for _, future in batch + self._queue:
                if not future.done():
                    future.cancel()
            self._queue.clear()
            raise
        finally:
            # Here, not in a done callback: an item queued after the loop above found the
            # queue empty must see this task gone, or it would wait for nobody.
            self._task = None

    async def aclose(self) -> None:
        """Shutdown, once callers are done: cancel a batch still running (one whose
        callers gave up) and wait for it, so it uses nothing closed after this."""
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    @property
    def busy(self) -> bool:
        """A batch is running or queued (shutdown waits for it)."""
        return self._task is not None
