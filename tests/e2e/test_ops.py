"""Ops checks on real processes: JSON logs that trace a request and keep secrets out,
`longtail check`, and a bad setting that stops start-up with its name."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.client import Client
from tests.e2e.cluster import Cluster, longtail_command

pytestmark = pytest.mark.e2e

CLUSTER_ENV = {"LONGTAIL_LOG_LEVEL": "INFO"}
SECRET_BODY = "the launch code is 0000"
PASSWORD = "hunter2-very-secret"


async def test_logs_are_json_carry_the_request_id_and_no_secrets(http, cluster: Cluster):
    alice = await Client(http, cluster.urls[0]).signup(f"logs{uuid.uuid4().hex[:6]}", PASSWORD)
    bob = await Client(http, cluster.urls[0]).signup(f"logb{uuid.uuid4().hex[:6]}", PASSWORD)
    await alice.befriend(bob)
    trace = f"trace-{uuid.uuid4().hex[:8]}"
    resp = await alice.request(
        "POST",
        "/api/messages",
        {"to": bob.user_id, "body": SECRET_BODY, "client_id": "l1"},
        headers={"X-Request-ID": trace},
    )
    assert resp.status == 201
    await Client(http, cluster.urls[0], token=alice.token).request(
        "GET", f"/api/events/jsonp?callback=cb&cursor=0&timeout=0&token={alice.token}"
    )

    gateway_lines = cluster.gateways[0].log.read_text().splitlines()
    chatcore_lines = cluster.chatcore.log.read_text().splitlines()
    records = [json.loads(line) for line in gateway_lines + chatcore_lines if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    traced = [r for r in records if r.get("request_id") == trace]
    assert any("/api/messages" in r["msg"] for r in traced), "the gateway's access line"
    # Sends reach chatcore in batches (POST /internal/sends) under the id of the batch's
    # first send: here, the only one.
    assert any("/internal/sends" in r["msg"] for r in traced), "chatcore's line, same id"
    everything = "\n".join(gateway_lines + chatcore_lines)
    assert SECRET_BODY not in everything and PASSWORD not in everything
    assert alice.token not in everything and bob.token not in everything


def test_check_reports_each_dependency(cluster: Cluster):
    ok = subprocess.run(
        [longtail_command(), "check"],
        env=cluster.chatcore.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for variable in ("REDIS_URL: ok", "DATABASE_URL: ok", "CHATCORE_URL: ok"):
        assert variable in ok.stdout
    broken = {
        **cluster.chatcore.env,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "CHATCORE_URL": "http://127.0.0.1:1",
    }
    bad = subprocess.run(
        [longtail_command(), "check"], env=broken, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert "REDIS_URL: FAILED" in bad.stdout and "CHATCORE_URL: FAILED" in bad.stdout
    assert "DATABASE_URL: ok" in bad.stdout


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LONGTAIL_POLL_TIMEOUT", "-5", "LONGTAIL_POLL_TIMEOUT='-5': must be a positive number"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL='localhost:6379': must be a redis://"),
        ("LONGTAIL_DRAIN_SECONDS", "soon", "LONGTAIL_DRAIN_SECONDS='soon': must be a positive"),
    ],
)
def test_a_bad_setting_stops_start_up_with_its_name(cluster: Cluster, variable, value, message):
    for role in ("gateway", "chatcore"):
        result = subprocess.run(
            [longtail_command(), role],
            env={**cluster.chatcore.env, variable: value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0]
