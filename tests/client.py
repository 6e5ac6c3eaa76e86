"""A small HTTP client for the public API, as a browser script would use it."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

_ids = itertools.count(1)


@dataclass
class Response:
    status: int
    body: Any
    headers: Any

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"].get("code")
        return None


@dataclass
class Client:
    """One user (or anonymous) talking to one gateway base URL at a time."""

    http: aiohttp.ClientSession
    base: str
    token: str | None = None
    user_id: int | None = None
    username: str | None = None
    cursor: int = 0
    seen: list[int] = field(default_factory=list)
    # Typing and presence arrive without a seq; kept apart from the durable events.
    ephemeral: list[dict[str, Any]] = field(default_factory=list)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        base: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        # Raw bodies go as a stream: aiohttp warns about large in-memory bytes.
        data: Any = (
            io.BytesIO(raw)
            if raw is not None
            else (json.dumps(body).encode() if body is not None else None)
        )
        hdrs = self.headers(headers)
        if data is not None and "Content-Type" not in hdrs:
            hdrs["Content-Type"] = "application/json"
        async with self.http.request(
            method,
            (base or self.base) + path,
            data=data,
            headers=hdrs,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.read()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = text
            return Response(resp.status, parsed, resp.headers)

    async def signup(self, username: str, password: str = "correct horse") -> Client:
        resp = await self.request(
            "POST", "/api/register", {"username": username, "password": password}
        )
        assert resp.status == 201, resp
        resp = await self.request(
            "POST", "/api/login", {"username": username, "password": password}
        )
        assert resp.status == 200, resp
        self.token, self.user_id, self.username = resp.body["token"], resp.body["id"], username
        return self

    async def befriend(self, other: Client) -> int:
        assert (
            await self.request("POST", "/api/friends", {"username": other.username})
        ).status == 201
        resp = await other.request("POST", "/api/friends", {"username": self.username})
        assert resp.status == 201, resp
        return int(resp.body["conversation_id"])

    async def send(
        self, to: Client, body: str, client_id: str | None = None, base: str | None = None
    ) -> Response:
        return await self.request(
            "POST",
            "/api/messages",
            {"to": to.user_id, "body": body, "client_id": client_id or f"c{next(_ids)}"},
            base=base,
        )

    async def poll(self, *, base: str | None = None, timeout: float = 5) -> list[dict[str, Any]]:
        """One long-poll from the client's cursor: its durable events (the cursor advances,
        seqs are recorded); ephemeral ones go to `self.ephemeral`."""
        resp = await self.request(
            "GET",
            f"/api/events?cursor={self.cursor}&timeout={timeout}",
            base=base,
            timeout=timeout + 10,
        )
        assert resp.status == 200, resp
        events = [e for e in resp.body["events"] if "seq" in e]
        self.ephemeral += [e for e in resp.body["events"] if "seq" not in e]
        self.seen.extend(e["seq"] for e in events)
        self.cursor = resp.body["cursor"]
        return events

    async def poll_until(
        self, count: int, *, bases: list[str] | None = None, deadline: float = 20
    ) -> list[dict[str, Any]]:
        """Long-poll (rotating over `bases`) until `count` events arrived or the deadline."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        got: list[dict[str, Any]] = []
        for i in itertools.count():
            if len(got) >= count or loop.time() > end:
                break
            base = bases[i % len(bases)] if bases else None
            got.extend(await self.poll(base=base, timeout=min(5, max(0.1, end - loop.time()))))
        return got


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"]["body"] for e in events if e["type"] == "message"]
