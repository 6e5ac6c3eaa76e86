"""chatcore's internal HTTP API, for the gateways only (never routed by the load balancer).

Every request carries `Authorization: Bearer <LONGTAIL_SECRET>`. The gateway has already
authenticated the user; paths name the acting user by id.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection

from chatcore import sends_socket
from chatcore.internal import require_secret, send_batch
from chatcore.sends_socket import SendSockets, SendsSocket
from chatcore.service import EVENTS_PAGE, Chat
from longtail.errors import bad_request
from longtail.lean import LeanApplication, LeanRequest
from longtail.logs import REQUEST_ID_HEADER, begin_request
from longtail.validate import field_int, field_str, query_int
from longtail.web import MAX_JSON_DEPTH, JsonHandler, NotFoundHandler, body_object

# A gateway's presence changes in one request (gateway.presence batches them).
MAX_PRESENCE_CHANGES = 1000


class InternalHandler(JsonHandler):
    chat: Chat

    def initialize(self, chat: Chat) -> None:
        self.chat = chat

    def prepare(self) -> None:
        begin_request(self.request.headers.get(REQUEST_ID_HEADER))
        require_secret(self.chat, self.request.headers.get("Authorization", ""))


class Health(InternalHandler):
    def prepare(self) -> None:
        """Health needs no secret: it says only whether the database answers."""

    async def get(self) -> None:
        await self.chat.ping()
        self.send_json({"status": "ok"})


class Register(InternalHandler):
    async def post(self) -> None:
        self.send_json(await self.chat.register(self.json_body()), 201)


class Login(InternalHandler):
    async def post(self) -> None:
        self.send_json(await self.chat.login(self.json_body()))


class Logout(InternalHandler):
    async def post(self) -> None:
        await self.chat.logout(field_str(self.json_body(), "token"))
        self.send_json({"ok": True})


class Verify(InternalHandler):
    async def post(self) -> None:
        self.send_json(await self.chat.verify(field_str(self.json_body(), "token")))


class Friends(InternalHandler):
    async def get(self, user_id: str) -> None:
        self.send_json(await self.chat.friends(int(user_id)))

    async def post(self, user_id: str) -> None:
        result, changed = await self.chat.request_friend(int(user_id), self.json_body())
        self.send_json(result, 201 if changed else 200)


class Friend(InternalHandler):
    async def delete(self, user_id: str, other_id: str) -> None:
        await self.chat.remove_friend(int(user_id), int(other_id))
        self.set_status(204)
        self.finish()


class Messages(InternalHandler):
    async def post(self, user_id: str) -> None:
        message, created = await self.chat.send(int(user_id), self.json_body())
        self.send_json({"message": message}, 201 if created else 200)


class Sends(InternalHandler):
    """POST takes the lean path (LeanSends); any other method is a 405 here."""


class LeanSends(LeanRequest[Chat]):
    """`POST /internal/sends` without a RequestHandler: a gateway's batch of sends,
    `{"sends": [{"user_id", "message"}]}`, one result each.

    The request succeeds as a whole (200) even when some sends are refused: each result
    carries the status and body its own `POST /messages` would have had.

    Why lean: chatcore's hottest request. At 1,000 messages/s a batch carries three or
    four sends, and without Tornado's handler machinery around each batch chatcore
    spends about 5% less CPU per event (docs/benchmarks.md). The contract is
    InternalHandler's, answer for answer: the shared secret, the request id (echoed,
    too), the same checks, JSON errors and access log line.
    """

    __slots__ = ("_chunks",)
    method = "POST"
    error_log: ClassVar[logging.Logger] = logging.getLogger("tornado.application")
    # The tasks running now: the event loop keeps only weak references to tasks.
    running: ClassVar[set[asyncio.Task[None]]] = set()

    def __init__(self, chat: Chat, conn: HTTP1Connection) -> None:
        super().__init__(chat, conn)
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        """Bounded by the server's max_body_size, as on the handler path."""
        self._chunks.append(chunk)

    def finish(self) -> None:
        task = asyncio.ensure_future(self._respond())
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    def on_connection_close(self) -> None:
        """Gone while still sending its request: nothing was started. Gone later: the
        sends are stored all the same (the gateway retries them by client_id)."""

    async def answer(self, request: httputil.HTTPServerRequest) -> tuple[int, bytes]:
        require_secret(self.services, request.headers.get("Authorization", ""))
        body = body_object(b"".join(self._chunks), MAX_JSON_DEPTH + 3)
        answer = await send_batch(self.services, body)
        return 200, json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()


class Conversations(InternalHandler):
    async def get(self, user_id: str) -> None:
        self.send_json({"conversations": await self.chat.conversations(int(user_id))})


class History(InternalHandler):
    async def get(self, user_id: str, conversation_id: str) -> None:
        before = query_int(self.get_query_argument("before", None), "before", low=1)
        limit = query_int(self.get_query_argument("limit", None), "limit", low=1, high=200)
        self.send_json(await self.chat.history(int(user_id), int(conversation_id), before, limit))


class Read(InternalHandler):
    async def post(self, user_id: str, conversation_id: str) -> None:
        self.send_json(
            await self.chat.mark_read(int(user_id), int(conversation_id), self.json_body())
        )


class Events(InternalHandler):
    async def get(self, user_id: str) -> None:
        after = query_int(self.get_query_argument("after", None), "after", default=None)
        limit = (
            query_int(self.get_query_argument("limit", None), "limit", low=1, high=EVENTS_PAGE)
            or EVENTS_PAGE
        )
        if after is None:
            self.send_json({"events": [], "head": await self.chat.head(int(user_id))})
            return
        events, head = await self.chat.events(int(user_id), after, limit)
        # Events are stored as JSON text: spliced in, not decoded and encoded again.
        body = b'{"head":%d,"events":[%s]}' % (head, b",".join(e.data for e in events))
        self.finish(body)


class Rooms(InternalHandler):
    async def post(self, user_id: str) -> None:
        self.send_json(await self.chat.create_room(int(user_id), self.json_body()), 201)


class Room(InternalHandler):
    async def get(self, user_id: str, room_id: str) -> None:
        self.send_json(await self.chat.room(int(user_id), int(room_id)))


class RoomMembers(InternalHandler):
    async def post(self, user_id: str, room_id: str) -> None:
        self.send_json(await self.chat.invite(int(user_id), int(room_id), self.json_body()))


class RoomLeave(InternalHandler):
    async def post(self, user_id: str, room_id: str) -> None:
        await self.chat.leave_room(int(user_id), int(room_id))
        self.send_json({"ok": True})


class Typing(InternalHandler):
    async def post(self, user_id: str) -> None:
        await self.chat.typing(int(user_id), self.json_body())
        self.send_json({"ok": True})


class Presence(InternalHandler):
    async def post(self, user_id: str) -> None:
        body = self.json_body()
        await self.chat.presence(int(user_id), body.get("online") is True)
        self.send_json({"ok": True})


class PresenceBatch(InternalHandler):
    """`POST /internal/presence`: `{"changes": [{"user_id", "online"}]}`, in order."""

    async def post(self) -> None:
        changes = self.json_body().get("changes")
        if not isinstance(changes, list) or not changes:
            raise bad_request("'changes' must be a non-empty list.", "invalid_field")
        if len(changes) > MAX_PRESENCE_CHANGES:
            raise bad_request(
                f"At most {MAX_PRESENCE_CHANGES} changes per request.", "invalid_field"
            )
        parsed: list[tuple[int, bool]] = []
        for change in changes:
            if not isinstance(change, dict) or not isinstance(change.get("online"), bool):
                raise bad_request(
                    "Each change needs a user_id and online: true or false.", "invalid_field"
                )
            parsed.append((field_int(change, "user_id"), change["online"]))
        await self.chat.presence_many(parsed)
        self.send_json({"ok": True})


def make_app(chat: Chat, sockets: SendSockets, **settings: Any) -> tornado.web.Application:
    """chatcore's routes; `sockets` keeps the send sockets for shutdown (chatcore.app)."""
    user = r"/internal/users/(\d{1,18})"
    return LeanApplication(
        chat,
        {("POST", "/internal/sends"): LeanSends},
        [
            (r"/internal/health", Health, {"chat": chat}),
            (r"/internal/register", Register, {"chat": chat}),
            (r"/internal/login", Login, {"chat": chat}),
            (r"/internal/logout", Logout, {"chat": chat}),
            (r"/internal/sessions/verify", Verify, {"chat": chat}),
            (user + r"/friends", Friends, {"chat": chat}),
            (user + r"/friends/(\d{1,18})", Friend, {"chat": chat}),
            (user + r"/messages", Messages, {"chat": chat}),
            (r"/internal/sends", Sends, {"chat": chat}),
            (sends_socket.PATH, SendsSocket, {"chat": chat, "sockets": sockets}),
            (user + r"/conversations", Conversations, {"chat": chat}),
            (user + r"/conversations/(\d{1,18})/messages", History, {"chat": chat}),
            (user + r"/conversations/(\d{1,18})/read", Read, {"chat": chat}),
            (user + r"/events", Events, {"chat": chat}),
            (user + r"/rooms", Rooms, {"chat": chat}),
            (user + r"/rooms/(\d{1,18})", Room, {"chat": chat}),
            (user + r"/rooms/(\d{1,18})/members", RoomMembers, {"chat": chat}),
            (user + r"/rooms/(\d{1,18})/leave", RoomLeave, {"chat": chat}),
            (user + r"/typing", Typing, {"chat": chat}),
            (user + r"/presence", Presence, {"chat": chat}),
            (r"/internal/presence", PresenceBatch, {"chat": chat}),
        ],
        default_handler_class=NotFoundHandler,
        **settings,
    )
