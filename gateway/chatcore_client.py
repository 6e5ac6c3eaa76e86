"""The gateway's client for chatcore's internal API: keep-alive HTTP, errors as ApiError.

Sends, the hot command, are batched (longtail.batching): the sends that arrive while
one batch is on its way to chatcore go together in the next batch, which chatcore
stores in one group commit. Profiles put the cost of a relayed send in the HTTP request
on both sides, not in the message (issue 5), so batches go over a WebSocket
(gateway.chatcore_socket); `POST /internal/sends` while chatcore refuses that socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any, cast

import aiohttp

from gateway.chatcore_socket import ChatcoreSocket, Refused
from longtail.batching import Batcher
from longtail.errors import ApiError
from longtail.logs import request_headers
from longtail.wire import Event

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

# Metric labels name the route, not the user: ids are folded.
ROUTE_IDS = re.compile(r"/\d+")

log = logging.getLogger("longtail.gateway.chatcore")

# A command that takes longer than this is failing, not slow: the browser gets a 503
# and retries (sends are idempotent on client_id).
REQUEST_TIMEOUT = 10.0
# Sends per internal request: what piles up during one round trip at thousands of sends
# a second; chatcore splits it over its own commits (and refuses more than 512).
MAX_SEND_BATCH = 256

# A chatcore that refused the sends socket gets batches posted for this long, then the
# socket is tried again (it may have been upgraded meanwhile).
POST_AFTER_REFUSAL = 60.0
SOCKET_ROUTE = "WS /internal/sends"

# One send's answer from chatcore: (201 created or 200 a retry, the message).
SendResult = tuple[int, dict[str, Any]]


def unavailable() -> ApiError:
    return ApiError(
        503,
        "chatcore_unavailable",
        "The chat service is unavailable; try again in a moment.",
        headers={"Retry-After": "1"},
    )


class ChatcoreClient:
    def __init__(self, base_url: str, secret: str, metrics: GatewayMetrics | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._secret = secret
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._sends: Batcher[tuple[int, Any], SendResult] = Batcher(
            self._send_batch, MAX_SEND_BATCH
        )
        self._socket = ChatcoreSocket(self._base)
        self._post_until = 0.0  # monotonic time: batches are posted until then

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._secret}"},
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
        )

    async def close(self) -> None:
        await self._sends.aclose()
        await self._socket.close()
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        """Status and raw body of a successful call; chatcore's own error re-raised as is."""
        if self._session is None:
            raise RuntimeError("ChatcoreClient.start() was not called")
        route = f"{method} {ROUTE_IDS.sub('/{id}', path)}"
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, self._base + path, json=body, params=params, headers=request_headers()
            ) as resp:
                status, raw = resp.status, await resp.read()
                retry_after = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._failed(route, exc) from None
        self._answered(route, started, status)
        if status >= 400:
            error = _relayed(status, raw)
            if retry_after is not None:
                error.headers["Retry-After"] = retry_after
            raise error
        return status, raw

    async def _send_frame(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """A batch's results over the sends socket (`request`'s errors, the same way), or
        over `POST /internal/sends` while chatcore refuses the socket."""
        if self._session is None:
            raise RuntimeError("ChatcoreClient.start() was not called")
        if time.monotonic() < self._post_until:
            return (await self.call("POST", "/internal/sends", body=body))["results"]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                answer = await self._socket.call(self._session, body)
        except Refused as exc:
            log.warning("%s: posting batches for %.0f s", exc, POST_AFTER_REFUSAL)
            self._post_until = time.monotonic() + POST_AFTER_REFUSAL
            return (await self.call("POST", "/internal/sends", body=body))["results"]
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                self._socket.drop()
            raise self._failed(SOCKET_ROUTE, exc) from None
        status = int(answer["status"])
        self._answered(SOCKET_ROUTE, started, status)
        if status >= 400:
            raise _error_of(status, answer)
        return cast(list[dict[str, Any]], answer["results"])

    def _failed(self, route: str, exc: BaseException) -> ApiError:
        """A call that got no answer: logged, counted, and the 503 the browser retries."""
        log.warning("chatcore %s failed: %s", route, exc or type(exc).__name__)
        self._count_error(route)
        return unavailable()

    def _answered(self, route: str, started: float, status: int) -> None:
        """A call's time, and chatcore's own failures, into the metrics."""
        if self._metrics is not None:
            self._metrics.chatcore_seconds.labels(route).observe(time.perf_counter() - started)
        if status >= 500:
            self._count_error(route)

    def _count_error(self, route: str) -> None:
        if self._metrics is not None:
            self._metrics.chatcore_errors.labels(route).inc()

    async def call(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        _, raw = await self.request(method, path, body=body, params=params)
        return json.loads(raw) if raw else None

    async def send(self, user_id: int, message: Any) -> SendResult:
        """Store `message` (the body of a POST /api/messages) for the user; chatcore's
        refusal (not a friend, too long...) raised as is."""
        return await self._sends.submit((user_id, message))

    async def _send_batch(self, items: list[tuple[int, Any]]) -> list[SendResult | ApiError]:
        body = {"sends": [{"user_id": user_id, "message": m} for user_id, m in items]}
        results = await self._send_frame(body)
        if len(results) != len(items):
            log.error("chatcore answered %d of %d sends", len(results), len(items))
            raise ApiError(502, "bad_gateway", "The chat service gave an unexpected answer.")
        return [_send_result(r) for r in results]

    async def events_after(self, user_id: int, after: int) -> tuple[list[Event], int]:
        """The events after `after` from chatcore's log, and the user's head seq."""
        data = await self.call("GET", f"/internal/users/{user_id}/events", params={"after": after})
        return [Event(e["seq"], _encode(e)) for e in data["events"]], int(data["head"])

    async def head(self, user_id: int) -> int:
        data = await self.call("GET", f"/internal/users/{user_id}/events")
        return int(data["head"])

    async def healthy(self) -> bool:
        try:
            await self.request("GET", "/internal/health")
        except ApiError:
            return False
        return True


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def _relayed(status: int, raw: bytes) -> ApiError:
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    return _error_of(status, answer)


def _error_of(status: int, answer: Any) -> ApiError:
    """chatcore's error answer (`{"error": {"code", "message"}}`) as the ApiError to relay."""
    try:
        error = answer["error"]
        relayed = ApiError(status, str(error["code"]), str(error["message"]))
    except (KeyError, TypeError):
        log.error("chatcore answered %d without an error body", status)
        return ApiError(502, "bad_gateway", "The chat service gave an unexpected answer.")
    if status == 503:
        relayed.headers["Retry-After"] = "1"
    return relayed


def _send_result(result: dict[str, Any]) -> SendResult | ApiError:
    status = int(result["status"])
    if status < 400:
        return status, result["message"]
    error = result["error"]
    headers = {"Retry-After": "1"} if status == 503 else None
    return ApiError(status, str(error["code"]), str(error["message"]), headers)
