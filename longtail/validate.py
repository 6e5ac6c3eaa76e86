"""Reading typed fields out of a decoded JSON body, with a clear 400 for anything else."""

from __future__ import annotations

from typing import Any

from longtail.errors import bad_request


def field_str(body: dict[str, Any], name: str, *, max_len: int | None = None) -> str:
    value = body.get(name)
    if value is None:
        raise bad_request(f"'{name}' is required.", "missing_field")
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string.", "invalid_field")
    if max_len is not None and len(value) > max_len:
        raise bad_request(f"'{name}' must be at most {max_len} characters.", "invalid_field")
    return value


def field_int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if value is None:
        raise bad_request(f"'{name}' is required.", "missing_field")
    # bool is an int in Python, but `true` is not a user id.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_request(f"'{name}' must be a non-negative integer.", "invalid_field")
    return value


def query_int(
    raw: str | None, name: str, *, default: int | None = None, low: int = 0, high: int | None = None
) -> int | None:
    """Parse an integer query parameter, or return `default` when it is absent."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"'{name}' must be an integer.", f"invalid_{name}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"'{name}' must be {bound}.", f"invalid_{name}")
    return value
