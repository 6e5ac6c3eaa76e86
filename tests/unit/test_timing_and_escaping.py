"""Heartbeat maths and the script-safe encoding, without a loop or a browser."""

from __future__ import annotations

import json

import pytest

from gateway.cursors import script_safe, valid_callback
from gateway.transports.timing import jittered, next_wait
from longtail.errors import ApiError


def test_jitter_stays_within_twenty_percent():
    assert jittered(10, rand=lambda: 0.0) == pytest.approx(8)
    assert jittered(10, rand=lambda: 1.0) == pytest.approx(12)
    assert jittered(10, rand=lambda: 0.5) == pytest.approx(10)


def test_a_stream_never_waits_past_its_end_of_life():
    assert next_wait(15, remaining_life=3, rand=lambda: 0.5) == 3
    assert next_wait(15, remaining_life=100, rand=lambda: 0.5) == 15
    assert next_wait(15, remaining_life=-1, rand=lambda: 0.5) == 0


def test_script_safe_json_means_the_same_and_cannot_close_a_script():
    body = '</script><!-- & \u2028\u2029 "x"'
    raw = json.dumps({"body": body}, ensure_ascii=False).encode()
    safe = script_safe(raw)
    assert b"<" not in safe and b">" not in safe and b"&" not in safe
    assert "\u2028".encode() not in safe
    assert json.loads(safe) == {"body": body}


@pytest.mark.parametrize("name", ["cb", "$jq_1", "app.onEvents", "a.b.c.d"])
def test_plain_callback_names_pass(name):
    assert valid_callback(name) == name


@pytest.mark.parametrize("name", [None, "", "a()", "a;b", "a b", "a[0]", "a.b.c.d.e", "9a", "é"])
def test_anything_else_is_a_400(name):
    with pytest.raises(ApiError) as info:
        valid_callback(name)
    assert info.value.status == 400 and info.value.code == "invalid_callback"
