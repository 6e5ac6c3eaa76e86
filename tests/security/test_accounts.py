"""Account rules tests/gateway/test_api.py does not cover: look-alike names, the edges of
username and password lengths, and passwords taken exactly as typed."""

from __future__ import annotations

import uuid

import pytest

from tests.client import Client


def name(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def register(client: Client, username: str, password: str):
    return await client.request(
        "POST", "/api/register", {"username": username, "password": password}
    )


async def login(client: Client, username: str, password: str):
    return await client.request("POST", "/api/login", {"username": username, "password": password})


LOOK_ALIKES = {
    "cyrillic-a": "\u0430lice",
    "greek-omicron": "b\u03bfb",
    "fullwidth": "\uff41\uff4c\uff49\uff43\uff45",
    "zero-width-space": "ali\u200bce",
    "zero-width-joiner": "ali\u200dce",
    "right-to-left-override": "\u202eecila",
    "combining-accent": "alice\u0301",
    "kelvin-sign": "\u212aate",
    "dotless-i": "al\u0131ce",
    "fi-ligature": "\ufb01ona",
    "non-breaking-space": "ali\u00a0ce",
    "trailing-newline": "alice\n",
    "leading-space": " alice",
}


async def test_look_alike_usernames_cannot_be_registered(new_client):
    client = new_client(0)
    answers = {}
    for kind, username in LOOK_ALIKES.items():
        resp = await register(client, username, "long enough")
        answers[kind] = (resp.status, resp.error_code)
    assert {k: a for k, a in answers.items() if a != (400, "invalid_username")} == {}


async def test_a_look_alike_of_a_real_name_does_not_log_in(new_client):
    client = new_client(0)
    real = "alice" + uuid.uuid4().hex[:6]
    assert (await register(client, real, "password12")).status == 201
    for fake in ("\u0430" + real[1:], real[:2] + "\u200b" + real[2:], real.replace("i", "\u0131")):
        resp = await login(client, fake, "password12")
        assert (resp.status, resp.error_code) == (401, "invalid_credentials"), fake


async def test_names_that_casefold_to_a_real_one_reach_only_that_account(new_client):
    """Documented: names are matched by casefold, so the Kelvin sign finds a name with a
    'k'; it can never be registered as a second account, and the password still rules."""
    client = new_client(0)
    real = "kate" + uuid.uuid4().hex[:6]
    created = await register(client, real, "password12")
    assert created.status == 201
    kelvin = "\u212a" + real[1:]
    assert (await register(client, kelvin, "password34")).status == 400
    assert (await login(client, kelvin, "password34")).status == 401
    same = await login(client, kelvin, "password12")
    assert same.status == 200 and same.body["id"] == created.body["id"]


async def test_username_length_edges(new_client):
    client = new_client(0)
    answers = {}
    for length in (2, 3, 32, 33):
        resp = await register(client, (uuid.uuid4().hex * 2)[:length], "long enough")
        answers[length] = (resp.status, resp.error_code)
    assert answers == {
        2: (400, "invalid_username"),
        3: (201, None),
        32: (201, None),
        33: (400, "invalid_username"),
    }


@pytest.mark.parametrize(
    "password",
    [
        "p" * 256,
        "\u00e9" * 256,  # 256 characters, 512 bytes
        "\U0001f511" * 256,  # 256 characters, 1 KiB of UTF-8
        "        ",  # eight spaces: long enough, taken as typed
    ],
    ids=["256-ascii", "256-accented", "256-emoji", "8-spaces"],
)
async def test_passwords_up_to_256_characters_work(new_client, password):
    client = new_client(0)
    username = name()
    assert (await register(client, username, password)).status == 201
    assert (await login(client, username, password)).status == 200
    assert (await login(client, username, password[:-1])).status == 401


@pytest.mark.parametrize("password", ["p" * 257, "\U0001f511" * 257, "p" * 20_000])
async def test_passwords_over_256_characters_are_refused_before_hashing(new_client, password):
    client = new_client(0)
    username = name()
    resp = await register(client, username, password)
    assert (resp.status, resp.error_code) == (400, "invalid_field")
    assert (await register(client, username, "password12")).status == 201
    resp = await login(client, username, password)
    assert (resp.status, resp.error_code) == (400, "invalid_field")


async def test_passwords_are_taken_exactly_as_typed(new_client):
    client = new_client(0)
    username = name()
    password = "Pass word \u00e9"
    assert (await register(client, username, password)).status == 201
    # Trailing blanks are not trimmed, Unicode is not normalised, case matters.
    for near_miss in ("Pass word \u00e9 ", "Pass word e\u0301", "pass word \u00e9"):
        assert (await login(client, username, near_miss)).status == 401, repr(near_miss)
    assert (await login(client, username, password)).status == 200


async def test_a_nul_in_a_password_never_truncates_it(new_client):
    """Refused outright, or kept whole: "pass" must never open "pass\\x00word"."""
    client = new_client(0)
    username = name()
    created = await register(client, username, "pass\x00word")
    if created.status == 400:
        assert created.error_code == "invalid_field"
        return
    assert created.status == 201
    assert (await login(client, username, "pass")).status in (400, 401)
    assert (await login(client, username, "pass\x00word")).status == 200


@pytest.mark.parametrize("password", ["1234567", "\U0001f511" * 7])
async def test_seven_characters_are_too_weak_whatever_their_bytes(new_client, password):
    resp = await register(new_client(0), name(), password)
    assert (resp.status, resp.error_code) == (400, "weak_password")
