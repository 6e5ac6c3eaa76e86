"""Waiting on conditions with deadlines: never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def eventually(condition: Callable[[], Any], deadline: float = 5.0, what: str = "") -> None:
    """Poll `condition` (sync or async) every 10 ms until it is true or the deadline passes."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > end:
            raise AssertionError(f"not true within {deadline}s: {what or condition}")
        await asyncio.sleep(0.01)
