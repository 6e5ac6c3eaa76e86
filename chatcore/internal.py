"""What chatcore's two internal transports share (chatcore.api over HTTP,
chatcore.sends_socket over a WebSocket): the shared secret, and a gateway's batch of sends."""

from __future__ import annotations

import hmac
from typing import Any

from chatcore.service import Chat
from longtail.errors import ApiError, bad_request
from longtail.validate import field_int

# A gateway batches what arrived during its previous call; this bounds one request.
MAX_SENDS = 512


def require_secret(chat: Chat, authorization: str) -> None:
    """A 401 unless the request carries `Authorization: Bearer <LONGTAIL_SECRET>`."""
    expected = f"Bearer {chat.settings.secret}".encode()
    if not hmac.compare_digest(authorization.encode(), expected):
        raise ApiError(401, "bad_secret", "chatcore's internal API needs the shared secret.")


async def send_batch(chat: Chat, body: dict[str, Any]) -> dict[str, Any]:
    """Check a batch (each message was checked against the public limit by the gateway,
    so the body may nest three levels deeper), store it, and say how each send went."""
    items = body.get("sends")
    if not isinstance(items, list) or not items:
        raise bad_request("'sends' must be a non-empty list.", "invalid_field")
    if len(items) > MAX_SENDS:
        raise bad_request(f"At most {MAX_SENDS} sends per batch.", "invalid_field")
    if not all(isinstance(item, dict) for item in items):
        raise bad_request("Each send must be a JSON object.", "invalid_field")
    pairs = [(field_int(item, "user_id"), item.get("message")) for item in items]
    results: list[dict[str, Any]] = []
    for outcome in await chat.send_many(pairs):
        if isinstance(outcome, ApiError):
            results.append({"status": outcome.status, **outcome.body()})
        else:
            message, created = outcome
            results.append({"status": 201 if created else 200, "message": message})
    return {"results": results}
