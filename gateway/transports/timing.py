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


# After a routine close (max age) clients come back at once; the gateway is fine.
RETRY_SOON_MS = 1000


def retry_after(reason: str, drain_spread: float, rand: Callable[[], float] = random.random) -> int:
    """The reconnect delay (ms) a closing stream tells its client.

    A draining gateway sends its thousands of clients elsewhere at once; each gets its
    own delay across `drain_spread` seconds so the other gateways see a ramp, not a
    wall of reconnects in the same second.
    """
    if reason == "draining":
        return int(1000 * drain_spread * rand())
    return RETRY_SOON_MS
