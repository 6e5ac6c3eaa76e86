"""What a stopping gateway waits for: the work requests started, and batches in flight."""

from __future__ import annotations

import asyncio

from gateway.inflight import InFlight
from longtail.batching import Batcher


async def test_settle_waits_for_work_that_ends_in_time():
    inflight, release = InFlight(), asyncio.Event()
    finished = []

    async def work() -> None:
        await release.wait()
        finished.append(True)

    inflight.start(work())
    settling = asyncio.create_task(inflight.settle(5))
    await asyncio.sleep(0)
    assert not settling.done(), "settle returned while the work still ran"
    release.set()
    assert await asyncio.wait_for(settling, 5) == 0
    assert finished == [True] and len(inflight) == 0


async def test_settle_cancels_what_outlasts_the_timeout_and_waits_for_it():
    inflight, cleaned_up = InFlight(), []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # its own clean-up still runs before settle returns
            cleaned_up.append(True)

    task = asyncio.ensure_future(stuck())
    inflight.join(task)  # a task started elsewhere (Tornado's, for a handler)
    assert await asyncio.wait_for(inflight.settle(0.05), 5) == 1
    assert task.cancelled() and cleaned_up == [True] and len(inflight) == 0


async def test_settle_with_nothing_in_flight_returns_at_once():
    assert await asyncio.wait_for(InFlight().settle(60), 1) == 0


async def test_a_batchers_aclose_cancels_the_batch_its_callers_left():
    started, ended = asyncio.Event(), []

    async def run(batch: list[int]) -> list[int | BaseException]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        return batch

    group: Batcher[int, int] = Batcher(run)
    caller = asyncio.create_task(group.submit(1))
    await asyncio.wait_for(started.wait(), 5)
    caller.cancel()  # gone: the batch itself would go on
    await asyncio.wait_for(group.aclose(), 5)
    assert ended == ["cancelled"] and not group.busy
    await asyncio.wait_for(group.aclose(), 5)  # idle: nothing to do
