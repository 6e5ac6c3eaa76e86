"""Timing maths of held connections, pure so it is testable without an event loop."""

from __future__ import annotations

import random
from collections.abc import Callable

# Heartbeats and stream lifetimes are spread by +/-20 %: thousands of streams opened
# in the same second (a deploy, a Redis failover) must not beat, expire and reconnect
# in the same second ever after.
JITTER = 0.2


def jittered(base: float, rand: Callable[[], float] = random.random) -> float:
    """`base` seconds, moved by up to JITTER of itself either way."""
    return base * (1 + JITTER * (2 * rand() - 1))


def next_wait(
    heartbeat: float, remaining_life: float, rand: Callable[[], float] = random.random
) -> float:
    """How long a stream may wait for events before it must beat or end."""
    return max(0.0, min(jittered(heartbeat, rand), remaining_life))
