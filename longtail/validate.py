"""Reading typed fields out of a decoded JSON body, with a clear 400 for anything else."""

from __future__ import annotations

from typing import Any

from longtail.errors import bad_request

# Ids and cursors are 64-bit in the database; anything larger cannot name anything.
MAX_ID = 2**63 - 1


def is_id(value: Any) -> bool:
    """A JSON integer that can be an id (bool is an int in Python, but `true` is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def field_str(body: dict[str, Any], name: str, *, max_len: int | None = None) -> str:
    value = body.get(name)
    if value is None:
        raise bad_request(f"'{name}' is required.", "missing_field")
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string.", "invalid_field")
    if max_len is not None and len(value) > max_len:
        raise bad_request(f"'{name}' must be at most {max_len} characters.", "invalid_field")
    # JSON may spell a lone surrogate (\ud800) that no UTF-8 text can hold, and NUL,
    # which PostgreSQL text refuses: both are refused here rather than failing later.
    if "\x00" in value or (not value.isascii() and _has_surrogate(value)):
        raise bad_request(f"'{name}' contains characters that are not allowed.", "invalid_field")
    return value


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def field_int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if value is None:
        raise bad_request(f"'{name}' is required.", "missing_field")
    if not is_id(value):
        raise bad_request(f"'{name}' must be a non-negative 64-bit integer.", "invalid_field")
    return int(value)


def query_int(
    raw: str | None, name: str, *, default: int | None = None, low: int = 0, high: int | None = None
) -> int | None:
    """Parse an integer query parameter, or return `default` when it is absent."""
    if raw is None or raw == "":
        return default
    invalid = bad_request(f"'{name}' must be an integer.", f"invalid_{name}")
    if not raw.isascii():  # int() takes other scripts' digits; ids are ASCII
        raise invalid
    try:
        value = int(raw)
    except ValueError:
        raise invalid from None
    high = MAX_ID if high is None else high
    if value < low or value > high:
        bound = f"between {low} and {high}"
        raise bad_request(f"'{name}' must be {bound}.", f"invalid_{name}")
    return value
