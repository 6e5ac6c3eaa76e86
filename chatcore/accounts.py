"""Registering users and checking their passwords."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore.models import User
from chatcore.passwords import Passwords
from longtail.errors import ApiError, bad_request
from longtail.validate import field_str

USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,32}")
MIN_PASSWORD = 8
MAX_PASSWORD = 256


def public(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username}


def username_key(username: str) -> str:
    return username.casefold()


def credentials(body: dict[str, Any]) -> tuple[str, str]:
    username = field_str(body, "username", max_len=64)
    password = field_str(body, "password", max_len=MAX_PASSWORD)
    return username, password


async def register(tx: AsyncSession, passwords: Passwords, body: dict[str, Any]) -> dict[str, Any]:
    username, password = credentials(body)
    if not USERNAME.fullmatch(username):
        raise bad_request(
            "A username is 3 to 32 letters, digits, '.', '_' or '-'.", "invalid_username"
        )
    if len(password) < MIN_PASSWORD:
        raise bad_request(f"A password has at least {MIN_PASSWORD} characters.", "weak_password")
    taken = ApiError(409, "username_taken", f"The username '{username}' is taken.")
    if await by_name(tx, username) is not None:
        raise taken
    user = User(
        username=username,
        username_key=username_key(username),
        password_hash=await passwords.hash(password),
    )
    tx.add(user)
    try:
        await tx.flush()
    except IntegrityError:
        raise taken from None
    return public(user)


async def authenticate(tx: AsyncSession, passwords: Passwords, body: dict[str, Any]) -> User:
    username, password = credentials(body)
    user = await by_name(tx, username)
    if not await passwords.verify(user.password_hash if user else None, password) or user is None:
        raise ApiError(401, "invalid_credentials", "Wrong username or password.")
    return user


async def by_name(tx: AsyncSession, username: str) -> User | None:
    return (
        await tx.execute(select(User).where(User.username_key == username_key(username)))
    ).scalar_one_or_none()


async def by_id(tx: AsyncSession, user_id: int) -> User | None:
    return await tx.get(User, user_id)
