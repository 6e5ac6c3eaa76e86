"""Sending messages for a user: the rate limit, the batched hop to chatcore, the count.

One path for both ways a browser sends: `POST /api/messages` (gateway.lean_send) and
`send` frames on its WebSocket (gateway.transports.websocket), so both meet the same
limit and the same rules, which chatcore decides.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.auth import User
from gateway.chatcore_client import SendResult
from gateway.limits import Rate
from longtail.errors import ApiError

if TYPE_CHECKING:
    from gateway.base import Services

Outcome = SendResult | ApiError


async def send_messages(services: Services, user: User, bodies: list[Any]) -> list[Outcome]:
    """Send each body (in this order) for `user`: one outcome each, never raised.

    The first ones within the user's send rate go to chatcore together (their order is
    kept: they join the gateway's next batch in a row); the rest are 429s.
    """
    rate = Rate("sends", services.settings.sends_per_minute, 60)
    allowed, refusal = await services.rates.take(rate, str(user.id), len(bodies))
    outcomes: list[Outcome]
    if allowed == 1:
        # A POST's one message: no gather, whose task per body cost 2% of the POST.
        outcomes = [await _outcome(services, user, bodies[0])]
    else:
        outcomes = list(
            await asyncio.gather(*(_outcome(services, user, body) for body in bodies[:allowed]))
        )
    if refusal is not None:
        outcomes += [refusal] * (len(bodies) - allowed)
    counter = services.metrics.sends
    for outcome in outcomes:
        if isinstance(outcome, ApiError):
            counter.labels(outcome.code).inc()
        else:
            counter.labels("created" if outcome[0] == 201 else "duplicate").inc()
    return outcomes


async def _outcome(services: Services, user: User, body: Any) -> Outcome:
    try:
        return await services.chatcore.send(user.id, body)
    except ApiError as exc:
        return exc


async def send_posted(
    services: Services, user: User, read_body: Callable[[], Any]
) -> tuple[int, bytes]:
    """`POST /api/messages` once the user is known: the status (201, or 200 for a retry)
    and the JSON answer; the body's or chatcore's refusal raised as an ApiError."""
    try:
        body = read_body()
    except ApiError as exc:
        services.metrics.sends.labels(exc.code).inc()
        raise
    (outcome,) = await send_messages(services, user, [body])
    if isinstance(outcome, ApiError):
        raise outcome
    status, message = outcome
    return status, json.dumps({"message": message}, ensure_ascii=False).encode()
