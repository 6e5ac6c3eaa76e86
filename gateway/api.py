"""The public REST API (DESIGN.md): accounts, friends, messages, conversations.

The gateway authenticates and checks the envelope (size, JSON); chatcore validates the
fields and owns every rule, so there is one place that decides what is valid.
"""

from __future__ import annotations

import json

from gateway.auth import COOKIE, request_token
from gateway.base import GatewayHandler
from gateway.limits import Rate
from longtail.validate import field_str, query_int


class Register(GatewayHandler):
    async def post(self) -> None:
        await self.relay("POST", "/internal/register", body=self.json_body())


class Login(GatewayHandler):
    async def post(self) -> None:
        body = self.json_body()
        # Password guessing: attempts are limited per account and per address.
        settings, rates = self.services.settings, self.services.rates
        # Validated before it names a Redis key; chatcore checks the rest.
        username = field_str(body, "username", max_len=64)
        if username:
            await rates.hit(
                Rate("login_attempts", settings.logins_per_15min, 900), username.casefold()[:64]
            )
        await rates.hit(
            Rate("login_attempts_per_address", 10 * settings.logins_per_15min, 900),
            self.request.remote_ip or "",
        )
        _, raw = await self.services.chatcore.request("POST", "/internal/login", body=body)
        session = json.loads(raw)
        self.set_cookie(
            COOKIE,
            session["token"],
            httponly=True,
            samesite="Lax",
            secure=self.request.protocol == "https",
            path="/",
            expires_days=self.services.settings.session_ttl / 86400,
        )
        self.finish(raw)


class Logout(GatewayHandler):
    async def post(self) -> None:
        user = await self.current_user_or_401()
        await self.services.chatcore.request(
            "POST", "/internal/logout", body={"token": request_token(self.request)}
        )
        # The client's next request may come back here before the announcement does.
        self.services.auth.sessions.forget(user.session)
        self.clear_cookie(COOKIE, path="/")
        self.send_json({"ok": True})


class Me(GatewayHandler):
    async def get(self) -> None:
        user = await self.current_user_or_401()
        await self.respond(json.dumps({"id": user.id, "username": user.username}).encode())


class Friends(GatewayHandler):
    async def get(self) -> None:
        user = await self.current_user_or_401()
        listing = await self.services.chatcore.call("GET", f"/internal/users/{user.id}/friends")
        online = await self.services.presence.online([f["id"] for f in listing["friends"]])
        for friend in listing["friends"]:
            friend["online"] = friend["id"] in online
        await self.respond(json.dumps(listing, ensure_ascii=False).encode())

    async def post(self) -> None:
        user = await self.current_user_or_401()
        rate = Rate("friend_requests", self.services.settings.friend_requests_per_hour, 3600)
        await self.services.rates.hit(rate, str(user.id))
        await self.relay("POST", f"/internal/users/{user.id}/friends", body=self.json_body())


class Friend(GatewayHandler):
    async def delete(self, other_id: str) -> None:
        user = await self.current_user_or_401()
        await self.services.chatcore.request(
            "DELETE", f"/internal/users/{user.id}/friends/{other_id}"
        )
        self.set_status(204)
        self.finish()


class Messages(GatewayHandler):
    """POST takes the lean path (gateway.lean_send); any other method is a 405 here."""


class Conversations(GatewayHandler):
    async def get(self) -> None:
        user = await self.current_user_or_401()
        await self.relay("GET", f"/internal/users/{user.id}/conversations")


class History(GatewayHandler):
    async def get(self, conversation_id: str) -> None:
        user = await self.current_user_or_401()
        params = {}
        for name, low, high in (("before", 1, None), ("limit", 1, 200)):
            value = query_int(self.get_query_argument(name, None), name, low=low, high=high)
            if value is not None:
                params[name] = value
        await self.relay(
            "GET",
            f"/internal/users/{user.id}/conversations/{conversation_id}/messages",
            params=params,
        )


class Read(GatewayHandler):
    async def post(self, conversation_id: str) -> None:
        user = await self.current_user_or_401()
        await self.relay(
            "POST",
            f"/internal/users/{user.id}/conversations/{conversation_id}/read",
            body=self.json_body(),
        )


class Rooms(GatewayHandler):
    async def post(self) -> None:
        user = await self.current_user_or_401()
        await self.relay("POST", f"/internal/users/{user.id}/rooms", body=self.json_body())


class Room(GatewayHandler):
    async def get(self, room_id: str) -> None:
        """The room and its members, each with whether they are online now."""
        user = await self.current_user_or_401()
        room = await self.services.chatcore.call(
            "GET", f"/internal/users/{user.id}/rooms/{room_id}"
        )
        online = await self.services.presence.online([m["id"] for m in room["members"]])
        for member in room["members"]:
            member["online"] = member["id"] in online
        await self.respond(json.dumps(room, ensure_ascii=False).encode())


class RoomMembers(GatewayHandler):
    async def post(self, room_id: str) -> None:
        user = await self.current_user_or_401()
        await self.relay(
            "POST", f"/internal/users/{user.id}/rooms/{room_id}/members", body=self.json_body()
        )


class RoomLeave(GatewayHandler):
    async def post(self, room_id: str) -> None:
        user = await self.current_user_or_401()
        await self.relay("POST", f"/internal/users/{user.id}/rooms/{room_id}/leave")


class Typing(GatewayHandler):
    async def post(self) -> None:
        user = await self.current_user_or_401()
        await self.relay("POST", f"/internal/users/{user.id}/typing", body=self.json_body())
