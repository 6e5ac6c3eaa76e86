from __future__ import annotations

import pytest

from longtail.wire import Event, Keys


def test_event_message_round_trip_carries_the_publish_time():
    event = Event(42, b'{"seq":42,"type":"message","body":"a:b"}')
    assert Event.from_message(event.to_message(now=1700000000.25)) == Event(
        42, event.data, 1700000000.25
    )


@pytest.mark.parametrize("raw", [b"", b"12", b"x:1:{}", b"12:", b"12:{}", b"1:x:{}"])
def test_malformed_messages_are_rejected(raw):
    with pytest.raises(ValueError):
        Event.from_message(raw)


def test_user_keys_share_one_cluster_slot_and_channels_map_back():
    keys = Keys("lt")
    assert keys.channel(7) == "lt:{u:7}:ch" and keys.buffer(7) == "lt:{u:7}:buf"
    assert keys.user_of_channel(keys.channel(7).encode()) == 7
    assert keys.user_of_channel(keys.control("gw1").encode()) is None
