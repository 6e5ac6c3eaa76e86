"""chatcore's POST /internal/sends, the gateways' batched hop: it takes the lean path
(chatcore.api.LeanSends) and keeps the handler path's contract, answer for answer."""

from __future__ import annotations

import logging
import uuid

import pytest

from tests.client import messages


def sends_url(stack) -> str:
    return f"http://127.0.0.1:{stack.core.port}/internal/sends"


def secret(stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.core.settings.secret}"}


async def test_a_batch_is_stored_and_answered_send_by_send(stack, http, pair, caplog):
    """One refusal is that send's answer alone; the request id comes back and is on
    chatcore's access log line; the stored message reaches its receiver."""
    alice, bob = pair
    request_id = uuid.uuid4().hex
    body = {
        "sends": [
            {
                "user_id": alice.user_id,
                "message": {"to": bob.user_id, "body": "hi", "client_id": "a"},
            },
            {
                "user_id": alice.user_id,
                "message": {"to": alice.user_id, "body": "me", "client_id": "b"},
            },
            {
                "user_id": alice.user_id,
                "message": {"to": bob.user_id, "body": "hi", "client_id": "a"},
            },
        ]
    }
    headers = {**secret(stack), "X-Request-ID": request_id}
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        async with http.post(sends_url(stack), json=body, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            assert resp.headers["X-Request-ID"] == request_id
            first, refused, retried = (await resp.json())["results"]
    assert first["status"] == 201 and first["message"]["body"] == "hi"
    assert refused["status"] >= 400 and refused["error"]["code"]
    assert retried["status"] == 200 and retried["message"]["id"] == first["message"]["id"]
    assert any(r.getMessage().startswith("200 POST /internal/sends") for r in caplog.records), (
        "the access log line"
    )
    assert messages(await bob.poll_until(1, bases=[stack.urls[1]])) == ["hi"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "wrong"])
async def test_a_batch_without_the_secret_is_refused_and_stores_nothing(
    stack, http, pair, authorization
):
    alice, bob = pair
    body = {
        "sends": [
            {
                "user_id": alice.user_id,
                "message": {"to": bob.user_id, "body": "x", "client_id": "s"},
            }
        ]
    }
    headers = {"Authorization": authorization} if authorization else {}
    async with http.post(sends_url(stack), json=body, headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "bad_secret"
    assert (await alice.send(bob, "after", client_id="s")).status == 201, "s was never stored"


async def test_other_methods_are_refused_as_before(stack, http):
    async with http.get(sends_url(stack), headers=secret(stack)) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
    async with http.get(sends_url(stack)) as resp:
        assert resp.status == 401


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"", "invalid_json"), (b"not json", "invalid_json"), (b"[1]", "invalid_json")],
)
async def test_a_body_that_is_no_json_object_is_a_400(stack, http, raw, code):
    async with http.post(sends_url(stack), data=raw, headers=secret(stack)) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == code


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_field"),
        ({"sends": []}, "invalid_field"),
        ({"sends": [1]}, "invalid_field"),
        ({"sends": [{"message": {}}]}, "missing_field"),
        ({"sends": [{"user_id": 1, "message": {}}] * 513}, "invalid_field"),
    ],
)
async def test_chatcore_refuses_a_malformed_batch_of_sends(stack, http, body, code):
    """The gateway's batched hop (POST /internal/sends) says what is wrong, as a 400."""
    async with http.post(sends_url(stack), json=body, headers=secret(stack)) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == code
