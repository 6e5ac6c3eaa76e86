"""REDIS_URL: one server, a Cluster or a Sentinel service, and clear errors otherwise."""

from __future__ import annotations

import pytest

from longtail.redisconn import parse_redis_url
from longtail.settings import ConfigError, Settings


def test_one_server_urls_are_passed_to_redis_py_as_they_are() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380/2", "unix:///run/redis.sock"):
        address = parse_redis_url(url)
        assert (address.kind, address.url) == ("single", url)


def test_cluster_url_lists_seed_nodes_with_default_port_and_credentials() -> None:
    address = parse_redis_url("redis+cluster://ops:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert address.kind == "cluster"
    assert address.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (address.username, address.password) == ("ops", "s@cret")


def test_sentinel_url_names_the_service_and_database() -> None:
    address = parse_redis_url("redis+sentinel://:pw@s1:26379,s2/longtail/3")
    assert address.kind == "sentinel"
    assert address.hosts == (("s1", 26379), ("s2", 26379))
    assert (address.service, address.db, address.password) == ("longtail", 3, "pw")
    assert address.username is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379", "scheme must be one of"),
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://h:70000", "bad port"),
        ("redis+cluster://h:7000/1", "only database 0"),
        ("redis+sentinel://h:26379", "name the Sentinel service"),
        ("redis+sentinel://h:26379/svc/x", "unexpected path"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_redis_url(url)


def test_a_bad_redis_url_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"REDIS_URL='redis\+sentinel://h'.*service"):
        Settings.from_env({"REDIS_URL": "redis+sentinel://h"})
