"""POST /api/messages takes the lean path (gateway.lean_send): the handler path's answers,
headers, logs and metrics, and a connection that goes on serving after each of them."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from tests.client import messages
from tests.waiting import eventually


def sent_count(stack, outcome: str) -> float:
    return sum(g.services.metrics.sends.labels(outcome)._value.get() for g in stack.gateways)


async def test_a_send_answers_with_the_handler_paths_headers_and_log_line(pair, stack, caplog):
    alice, bob = pair
    caplog.set_level(logging.INFO, logger="tornado.access")
    body = {"to": bob.user_id, "body": "hello", "client_id": "lean-1"}
    resp = await alice.request("POST", "/api/messages", body, headers={"X-Request-ID": "req-9"})
    assert resp.status == 201
    assert resp.body["message"]["body"] == "hello"
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Request-ID"] == "req-9"
    assert resp.headers["Server"].startswith("TornadoServer/")
    assert "Etag" not in resp.headers
    assert any(r.getMessage().startswith("201 POST /api/messages (") for r in caplog.records)
    # The same client_id again is the same message, answered 200.
    again = await alice.request("POST", "/api/messages", body)
    assert again.status == 200 and again.body["message"]["id"] == resp.body["message"]["id"]
    assert messages(await bob.poll_until(1)) == ["hello"]


async def test_refusals_are_json_with_the_request_id_and_counted(pair, stack, caplog):
    alice, bob = pair
    caplog.set_level(logging.INFO, logger="longtail.web")
    before = sent_count(stack, "invalid_json")
    resp = await alice.request(
        "POST", "/api/messages", raw=b"{not json", headers={"X-Request-ID": "req-10"}
    )
    assert resp.status == 400 and resp.error_code == "invalid_json"
    assert resp.headers["X-Request-ID"] == "req-10"
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert sent_count(stack, "invalid_json") == before + 1
    assert "POST /api/messages -> 400 invalid_json" in caplog.text

    anonymous = await alice.request(
        "POST", "/api/messages", {"to": bob.user_id, "body": "x"}, headers={"Authorization": ""}
    )
    assert anonymous.status == 401 and anonymous.error_code == "unauthorized"
    form = await alice.request(
        "POST",
        "/api/messages",
        raw=b"to=1&body=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status == 415
    stranger = await alice.request(
        "POST", "/api/messages", {"to": 0, "body": "x", "client_id": "nobody-1"}
    )
    assert stranger.status in (403, 404) and stranger.body["error"]["message"]


async def test_a_failure_inside_is_a_json_500_logged_with_its_traceback(
    pair, stack, caplog, monkeypatch
):
    alice, bob = pair

    async def broken(user_id: int, message: object) -> object:
        raise RuntimeError("a bug")

    for gateway in stack.gateways:
        monkeypatch.setattr(gateway.services.chatcore, "send", broken)
    resp = await alice.send(bob, "lost?")
    assert resp.status == 500
    assert resp.body == {
        "error": {"code": "internal_error", "message": "Something went wrong on our side."}
    }
    failure = next(r for r in caplog.records if r.getMessage().startswith("Uncaught exception"))
    assert failure.getMessage() == "Uncaught exception POST /api/messages"
    assert failure.exc_info is not None


async def test_other_methods_on_messages_still_go_to_the_handlers(pair):
    alice, _ = pair
    for method in ("GET", "PUT", "DELETE"):
        resp = await alice.request(method, "/api/messages")
        assert resp.status == 405 and resp.error_code == "method_not_allowed"


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


async def test_one_connection_goes_on_after_sends_refusals_and_an_oversized_body(pair, stack):
    """Each answer ends its request, so the kept-alive connection serves the next one,
    whichever path that takes; an oversized body is read to its end and answered 413."""
    alice, bob = pair
    host, port = stack.urls[0].removeprefix("http://").rsplit(":", 1)
    auth = alice.headers()["Authorization"]
    limit = stack.gateways[0].settings.max_request_bytes

    def post(body: bytes) -> bytes:
        return (
            f"POST /api/messages HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    message = json.dumps({"to": bob.user_id, "body": "kept alive", "client_id": "ka-1"})
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(post(message.encode()))
        writer.write(post(b"[]"))
        writer.write(post(b"x" * (limit + 1)))
        writer.write(
            f"GET /api/me HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n".encode()
        )
        async with asyncio.timeout(10):
            answers = [await read_answer(reader) for _ in range(4)]
    finally:
        writer.close()
    assert [status for status, _ in answers] == [201, 400, 413, 200]
    assert json.loads(answers[0][1])["message"]["body"] == "kept alive"
    assert json.loads(answers[3][1])["username"] == alice.username


async def test_a_message_whose_sender_left_before_the_answer_is_still_delivered(pair, stack):
    alice, bob = pair
    host, port = stack.urls[0].removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"to": bob.user_id, "body": "sent, then gone", "client_id": "gone-1"})
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST /api/messages HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {alice.headers()['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    await writer.drain()
    writer.close()
    received: list[dict] = []

    async def arrived() -> bool:
        received.extend(await bob.poll(timeout=1))
        return "sent, then gone" in messages(received)

    await eventually(arrived, deadline=10, what="the message of a sender who left")
    # Its retry finds the stored message.
    retry = await alice.send(bob, "sent, then gone", client_id="gone-1")
    assert retry.status == 200


async def test_a_piggybacked_send_carries_the_events_missed(pair):
    alice, bob = pair
    before = f"before {uuid.uuid4().hex[:6]}"
    await bob.send(alice, before)
    resp = await alice.request(
        "POST",
        "/api/messages",
        {"to": bob.user_id, "body": "and mine", "client_id": "pb-1"},
        headers={"X-Longtail-Cursor": str(alice.cursor)},
    )
    assert resp.status == 201
    assert resp.body["message"]["body"] == "and mine"
    assert messages(resp.body["piggyback"]["events"]) == [before, "and mine"]
