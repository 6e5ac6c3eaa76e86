"""docs/openapi.yaml against a running stack: schemathesis generates requests from the
document (valid ones and, in negative mode, ones that break it), sends them to a gateway
of the in-process stack as an authenticated user, and checks every answer: no 5xx, the
status is documented for the operation, the content type and body match the schema,
required response headers are there, and what the document calls invalid is refused.

How the run is bounded (pytest-timeout is 60 s per test):
- one test per operation, each on its own stack, MAX_EXAMPLES generated cases (positive
  and negative mixed) plus a few hand-made ones that reach the success answers (a real
  friend, conversation, room); derandomized, so CI runs are reproducible
  (LONGTAIL_OPENAPI_SEED explores others); no shrinking.
- long-polls: a generated `timeout` that is valid is sent as 0 (the server would hold
  the request up to 55 s), so only invalid timeouts keep their generated value.
- streams (SSE, XHR, multipart, iframe) never end and WebSocket is not HTTP after the
  upgrade: they are not fuzzed; their error answers and the start of their success
  answers are checked against the document by hand-made requests.
- logout gets a fresh session per call, so it never revokes the token the run uses.

Warnings: the suite runs with `filterwarnings = error`, and hypothesis/schemathesis
emit none on this path today (no `.example()`, explicit settings); nothing is silenced.
A failing request is reported with a curl line to reproduce it.

Bugs this fuzzing found (KNOWN_BUGS, all fixed now; tests/security/ pins each): every
run first probes whether each is back, and while one is, a generated case that would
only hit it again is not sent, so one regression reads as one clear failure.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
import tornado.web
import yaml
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import make_app
from longtail.settings import Settings
from tests.client import Client
from tests.waiting import eventually

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
# CI runs are derandomized (the same cases every run); to explore further, run with
# another seed, e.g. LONGTAIL_OPENAPI_SEED=7 LONGTAIL_OPENAPI_EXAMPLES=200.
MAX_EXAMPLES = int(os.environ.get("LONGTAIL_OPENAPI_EXAMPLES", "25"))
SEED = int(os.environ["LONGTAIL_OPENAPI_SEED"]) if os.environ.get("LONGTAIL_OPENAPI_SEED") else None
REQUEST_TIMEOUT = 10.0
INT64_MAX = 2**63 - 1

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]

# Operations that never end or are not HTTP after their first answer: checked by hand.
STREAMS = {
    "GET /api/events/stream",
    "GET /api/events/multipart",
    "GET /api/events/xhr",
    "GET /api/events/iframe",
    "GET /api/events/ws",
}
LONG_POLLS = {"GET /api/events", "GET /api/events/jsonp"}

KNOWN_BUGS = {
    # A JSON integer beyond int64 in a body (`to`, `conversation_id`, `members`,
    # `user_id`) reaches the database driver: OverflowError (SQLite) / DataError
    # (asyncpg), a 500 instead of a 400. tests/security/test_hostile_bodies.py
    "huge_int": "an integer beyond int64 in a JSON body is a 500",
    # The same for `before` in a history query (when you are a member).
    "huge_before": "`before` beyond int64 is a 500",
    # parse_cursor accepts str.isdigit() characters that int() refuses ('²'): a
    # `cursor`, `Last-Event-ID` or `X-Longtail-Cursor` of '²' is a 500 (ValueError).
    # tests/security/test_hostile_requests.py
    "unicode_digit_cursor": "a cursor of non-decimal Unicode digits is a 500",
    # A lone surrogate escape (a JSON \ud800) in a string (password, usernames, message
    # body, client_id, room name) cannot be encoded as UTF-8 by the database driver or
    # argon2: a 500 on both backends. tests/security/test_hostile_bodies.py
    "lone_surrogate": "a lone UTF-16 surrogate in a JSON string is a 500",
    # PostgreSQL text cannot hold U+0000: a NUL in a login or friend username, a message
    # body or client_id, or a room name is a 500 there (SQLite stores it).
    # tests/security/test_hostile_bodies.py
    "nul": "a NUL character in a string field is a 500 on PostgreSQL",
}


def known_bugs(world: World, session: requests.Session) -> set[str]:
    """The KNOWN_BUGS the stack still has: one request that shows each."""
    auth = {"Authorization": f"Bearer {world.user.token}"}
    json_type = {**auth, "Content-Type": "application/json"}
    conv = world.conversation_id
    probes = {
        "huge_int": ("POST", "/api/typing", b'{"conversation_id": %d}' % 2**63),
        "huge_before": ("GET", f"/api/conversations/{conv}/messages?before={2**63}", None),
        "unicode_digit_cursor": ("GET", "/api/events?cursor=%C2%B2&timeout=0", None),
        "lone_surrogate": ("POST", "/api/friends", b'{"username": "a\\ud800"}'),
        "nul": ("POST", "/api/friends", b'{"username": "a\\u0000"}'),
    }
    present = set()
    for bug, (method, path, body) in probes.items():
        resp = session.request(
            method, world.base + path, data=body, headers=json_type, timeout=REQUEST_TIMEOUT
        )
        if resp.status_code >= 500:
            present.add(bug)
    return present


def load_schema() -> Any:
    return schemathesis.openapi.from_path(DOC)


def documented_operations() -> list[str]:
    doc = yaml.safe_load(DOC.read_text())
    return [
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "post", "delete", "put", "patch", "head"}
    ]


FUZZED = [label for label in documented_operations() if label not in STREAMS]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The documented poll maximum (the suite's default is shorter), and rate limits out
    of the way: the run sends hundreds of requests as one user in a few seconds."""
    return settings.with_(
        poll_timeout_max=55,
        sends_per_minute=1_000_000,
        friend_requests_per_hour=1_000_000,
        logins_per_15min=1_000_000,
    )


@dataclass
class World:
    """The user the run acts as, and real ids for the success paths."""

    base: str
    user: Client
    friend: Client
    password: str
    conversation_id: int
    room_id: int
    message_id: int
    bugs: set[str] = field(default_factory=set)  # KNOWN_BUGS still present


async def settle(stack) -> None:
    """Wait until no connection is held and no presence push is in flight.

    Closing a held connection ends, after the unsubscribe grace, in a presence push to
    chatcore; the stack's teardown would cancel it on the gateway while chatcore still
    serves it, and chatcore's stop does not wait for the requests it is serving: the
    database connection of that request would be left open (a ResourceWarning, an
    error under `filterwarnings = error`).
    """

    def quiet() -> bool:
        return all(g.hub.channel_count() == 0 and not g.presence._pending for g in stack.gateways)

    await eventually(quiet, deadline=10, what="held connections and presence pushes to end")


@pytest.fixture
async def world(stack, pair) -> AsyncIterator[World]:
    alice, bob = pair
    conversation_id = int(
        (await alice.request("GET", "/api/conversations")).body["conversations"][0]["id"]
    )
    sent = await alice.send(bob, "hello")
    assert sent.status == 201, sent
    room = await alice.request("POST", "/api/rooms", {"name": "room", "members": [bob.user_id]})
    assert room.status == 201, room
    await alice.poll(timeout=0)
    yield World(
        base=stack.urls[0],
        user=alice,
        friend=bob,
        password="correct horse",  # tests.client.Client.signup's default
        conversation_id=conversation_id,
        room_id=int(room.body["id"]),
        message_id=int(sent.body["message"]["id"]),
    )
    await settle(stack)


# -- what a generated case becomes before it is sent ------------------------------------


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def known_bugs_hit(case: Any) -> set[str]:
    """The KNOWN_BUGS a generated case would hit."""
    hit = set()
    body = list(_walk(case.body))
    if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT64_MAX for v in body):
        hit.add("huge_int")
    before = str((case.query or {}).get("before", "")).strip()
    if before.lstrip("+-").isdecimal() and abs(int(before)) > INT64_MAX:
        hit.add("huge_before")
    strings = [v for v in body if isinstance(v, str)]
    strings += [k for v in body if isinstance(v, dict) for k in v]
    if any(0xD800 <= ord(c) <= 0xDFFF for v in strings for c in v):
        hit.add("lone_surrogate")
    if any("\x00" in v for v in strings):
        hit.add("nul")
    values = [(case.query or {}).get("cursor")]
    values += [(case.headers or {}).get(h) for h in ("X-Longtail-Cursor", "Last-Event-ID")]
    for value in values:
        if isinstance(value, str) and any(c.isdigit() and not c.isdecimal() for c in value):
            hit.add("unicode_digit_cursor")
    return hit


def is_valid_timeout(raw: Any) -> bool:
    try:
        return 0 <= float(raw) <= 55
    except (TypeError, ValueError):
        return False


def fresh_token(world: World) -> str:
    resp = requests.post(
        world.base + "/api/login",
        json={"username": world.user.username, "password": world.password},
        timeout=REQUEST_TIMEOUT,
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


@dataclass
class Sending:
    """What is added to a case when it is sent. The case itself is never edited:
    schemathesis would then re-derive what makes it invalid, and lose track of parts
    that only look invalid (extra query parameters, which the server ignores)."""

    headers: dict[str, str]
    params: dict[str, str]


def prepare(case: Any, world: World) -> Sending | None:
    """How to send a generated case, or None when it must not be sent."""
    if known_bugs_hit(case) & world.bugs:
        return None
    label = f"{case.method.upper()} {case.operation.path}"
    sending = Sending({}, {})
    if label in LONG_POLLS:
        # Empty means absent: the server's default wait, as long as a valid one.
        timeout = (case.query or {}).get("timeout")
        if timeout is None or timeout == "" or is_valid_timeout(timeout):
            sending.params["timeout"] = "0"
    secured = case.operation.definition.raw.get("security", True) != []
    if secured and not case.operation.schema.is_security_param_negated(case):
        # Real credentials, given at send time so schemathesis knows them as explicit
        # auth (ignored_auth then checks that leaving them out is a 401). The header
        # wins over whatever cookie or ?token= was generated.
        token = fresh_token(world) if label == "POST /api/logout" else world.user.token
        sending.headers["Authorization"] = f"Bearer {token}"
    return sending


def send_and_check(case: Any, world: World, session: requests.Session) -> None:
    sending = prepare(case, world)
    if sending is None:
        return
    case.call_and_validate(
        base_url=world.base,
        session=session,
        headers=sending.headers or None,
        params=sending.params or None,
        checks=CHECKS,
        timeout=REQUEST_TIMEOUT,
    )


# -- hand-made cases that reach the success answers --------------------------------------


def handmade(op: Any, label: str, world: World) -> list[Any]:
    """Requests a random generator would almost never make: ones that succeed."""
    friend = world.friend
    conv, room, msg = world.conversation_id, world.room_id, world.message_id
    piggy = {"X-Longtail-Cursor": "0"}
    ahead = {"X-Longtail-Cursor": "999999"}
    new = uuid.uuid4().hex[:8]
    cases: dict[str, list[dict[str, Any]]] = {
        "POST /api/register": [{"body": {"username": f"u{new}", "password": "password1"}}],
        "POST /api/login": [
            {"body": {"username": world.user.username, "password": world.password}},
            {"body": {"username": world.user.username, "password": "wrong password"}},
        ],
        "POST /api/logout": [{}],
        "GET /api/me": [{}, {"headers": piggy}, {"headers": ahead}],
        "GET /api/friends": [{"headers": piggy}],
        "POST /api/friends": [
            {"body": {"username": friend.username}, "headers": piggy},
            {"body": {"username": world.user.username}},
        ],
        "DELETE /api/friends/{id}": [{"path_parameters": {"id": friend.user_id}}],
        "POST /api/messages": [
            {"body": {"to": friend.user_id, "body": "hi", "client_id": new}, "headers": piggy},
            {"body": {"to": friend.user_id, "body": "hi", "client_id": new}},
            {"body": {"to": friend.user_id, "body": "other", "client_id": new}},
            {"body": {"conversation_id": room, "body": "room", "client_id": f"r{new}"}},
            {"body": {"to": friend.user_id, "body": "x" * 4001, "client_id": f"l{new}"}},
        ],
        "GET /api/conversations": [{"headers": piggy}],
        "GET /api/conversations/{id}/messages": [
            {"path_parameters": {"id": conv}, "query": {"limit": 1}, "headers": piggy},
            {"path_parameters": {"id": room}},
        ],
        "POST /api/conversations/{id}/read": [
            {"path_parameters": {"id": conv}, "body": {"message_id": msg}},
            {"path_parameters": {"id": conv}, "body": {"message_id": msg + 1000}},
        ],
        "POST /api/rooms": [{"body": {"name": " r ", "members": [friend.user_id]}}],
        "GET /api/rooms/{id}": [
            {"path_parameters": {"id": room}, "headers": piggy},
            {"path_parameters": {"id": conv}},
        ],
        "POST /api/rooms/{id}/members": [
            {"path_parameters": {"id": room}, "body": {"user_id": friend.user_id}},
        ],
        "POST /api/rooms/{id}/leave": [{"path_parameters": {"id": room}}],
        "POST /api/typing": [{"body": {"conversation_id": conv}}],
        "GET /api/events": [{"query": {"cursor": 0}}, {"query": {"cursor": 999999}}],
        "GET /api/events/jsonp": [
            {"query": {"callback": "app.onEvents", "cursor": 0}},
            {"query": {"callback": "cb", "cursor": "x"}},
            {"query": {"callback": "a-b"}},
        ],
    }
    made = []
    for spec in cases.get(label, []):
        spec = dict(spec)
        if "body" in spec:
            spec["media_type"] = "application/json"
        made.append(op.Case(**spec))
    return made


# -- the tests ---------------------------------------------------------------------------


def fuzz_operation(label: str, world: World) -> None:
    """Runs in a worker thread: the stack's event loop keeps serving meanwhile."""
    method, path = label.split(" ", 1)
    op = load_schema()[path][method]
    session = requests.Session()
    world.bugs = known_bugs(world, session)
    for case in handmade(op, label, world):
        send_and_check(case, world, session)

    strategies = [op.as_strategy(GenerationMode.POSITIVE)]
    if op.definition.raw.get("parameters") or "requestBody" in op.definition.raw:
        strategies.append(op.as_strategy(GenerationMode.NEGATIVE))
    if "{id}" in path:
        real = [world.conversation_id, world.room_id, world.friend.user_id]
        strategies += [op.as_strategy(path_parameters={"id": i}) for i in real]

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=st.one_of(strategies))
    def generated(case: Any) -> None:
        send_and_check(case, world, session)

    if SEED is not None:
        generated = seed(SEED)(generated)

    try:
        generated()
    finally:
        session.close()


@pytest.mark.parametrize("label", FUZZED)
async def test_operation_matches_the_document(label: str, world: World) -> None:
    await asyncio.to_thread(fuzz_operation, label, world)


def check_streams(world: World) -> None:
    schema = load_schema()
    session = requests.Session()
    for label in sorted(STREAMS - {"GET /api/events/ws"}):
        op = schema[label.split(" ", 1)[1]]["GET"]
        for spec in (
            {"query": {"cursor": "x"}},
            {"query": {"cursor": "999999"}},
            {"query": {"cursor": "-1"}},
            {"headers": {"X-Longtail-Cursor": "nope"}, "query": {"cursor": "0"}},
        ):
            send_and_check(op.Case(**spec), world, session)
        # No credentials: refused before the stream starts.
        no_auth = op.Case(query={"cursor": "0"})
        resp = no_auth.call(base_url=world.base, session=session, timeout=REQUEST_TIMEOUT)
        assert resp.status_code == 401, label
        no_auth.validate_response(resp, checks=CHECKS[:5])
    op = schema["/api/events/iframe"]["GET"]
    send_and_check(op.Case(query={"cursor": "0", "callback": "x;alert(1)"}), world, session)
    op = schema["/api/events/stream"]["GET"]
    send_and_check(op.Case(headers={"Last-Event-ID": "abc"}), world, session)

    # WebSocket: every refusal before the upgrade, as documented.
    op = schema["/api/events/ws"]["GET"]
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    auth = {"Authorization": f"Bearer {world.user.token}"}
    host = world.base.removeprefix("http://")
    refusals = [
        ({**upgrade, **auth}, {"cursor": "x"}, 400),
        (upgrade, {"cursor": "0"}, 401),
        ({**auth}, {"cursor": "0"}, 400),  # not an upgrade request at all
        ({**upgrade, **auth, "Origin": "http://evil.example"}, {"cursor": "0"}, 403),
        ({**upgrade, **auth, "Sec-WebSocket-Version": "99", "Origin": f"http://{host}"}, {}, 426),
    ]
    for headers, query, status in refusals:
        case = op.Case(headers=headers, query=query)
        # No shared session: its `Connection: keep-alive` would replace `Upgrade`.
        resp = case.call(base_url=world.base, timeout=REQUEST_TIMEOUT)
        assert resp.status_code == status, (headers, query, resp.status_code, resp.text)
        case.validate_response(resp, checks=CHECKS[:5])
    session.close()


async def test_streams_refuse_as_documented(world: World) -> None:
    await asyncio.to_thread(check_streams, world)


def documented_media_types(label: str, status: str) -> set[str]:
    method, path = label.split(" ", 1)
    doc = yaml.safe_load(DOC.read_text())
    response = doc["paths"][path][method.lower()]["responses"][status]
    return set(response.get("content", {}))


@pytest.mark.parametrize("label", sorted(STREAMS - {"GET /api/events/ws"}))
async def test_stream_answers_start_as_documented(label: str, world: World, http) -> None:
    """The beginning of each stream's 200: documented content type and headers."""
    path = label.split(" ", 1)[1]
    async with http.get(
        f"{world.base}{path}?cursor=0",
        headers={"Authorization": f"Bearer {world.user.token}", "X-Request-ID": "abc-1"},
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
    ) as resp:
        assert resp.status == 200
        media_type = resp.headers["Content-Type"].split(";")[0].strip()
        assert media_type in documented_media_types(label, "200")
        assert resp.headers["X-Request-ID"] == "abc-1"
        assert await resp.content.readany()  # the prelude arrives before any event
        if label == "GET /api/events/iframe":
            assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


async def test_websocket_upgrades_and_sends_ready(world: World, http) -> None:
    url = world.base.replace("http://", "ws://") + "/api/events/ws?cursor=0"
    async with http.ws_connect(url, headers={"Authorization": f"Bearer {world.user.token}"}) as ws:
        ready = await ws.receive_json(timeout=REQUEST_TIMEOUT)
        assert ready == {"type": "ready", "cursor": 0}


# -- the document covers every route, and only routes that exist -------------------------

HANDLER_METHODS = ("get", "post", "put", "patch", "delete", "head")


def route_samples(pattern: str) -> list[str]:
    """Concrete paths a route's regex stands for: `(\\d{1,18})` as an id, alternations
    expanded, escapes removed."""
    pattern = pattern.removesuffix("$").replace(r"(\d{1,18})", "{id}")
    group = re.search(r"\(([^()]*)\)", pattern)
    if group:
        alternatives = group.group(1).split("|")
        return [
            sample
            for alt in alternatives
            for sample in route_samples(pattern[: group.start()] + alt + pattern[group.end() :])
        ]
    return [pattern.replace("\\", "")]


def implemented_methods(handler: type[tornado.web.RequestHandler]) -> set[str]:
    return {
        m.upper()
        for m in HANDLER_METHODS
        if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)
    }


def routes() -> dict[str, set[str]]:
    services = SimpleNamespace(settings=Settings())
    app = make_app(services)  # type: ignore[arg-type]
    found: dict[str, set[str]] = {}
    for rule in app.wildcard_router.rules:
        handler = rule.target
        for sample in route_samples(rule.matcher.regex.pattern):
            found[sample] = implemented_methods(handler)
    # Held GETs and a message's POST take the lean path (longtail.lean), past
    # the handlers.
    for method, path in app._lean:
        found[path] = found.get(path, set()) | {method}
    return found


def test_every_route_is_documented_with_its_methods() -> None:
    doc = yaml.safe_load(DOC.read_text())
    documented = {
        path: {m.upper() for m in item if m in HANDLER_METHODS}
        for path, item in doc["paths"].items()
    }
    assert routes() == documented


def test_the_document_is_valid_openapi() -> None:
    schema = load_schema()
    schema.validate()
    ids = [
        op["operationId"]
        for item in yaml.safe_load(DOC.read_text())["paths"].values()
        for op in item.values()
    ]
    assert len(ids) == len(set(ids))


# -- error answers keep the request id (this test found them losing it) ---------------


async def test_error_answers_echo_the_request_id(world: World) -> None:
    resp = await world.user.request(
        "GET", "/api/events?cursor=x", headers={"X-Request-ID": "trace-1"}
    )
    assert resp.status == 400
    assert resp.headers.get("X-Request-ID") == "trace-1"
