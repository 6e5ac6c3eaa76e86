"""`python -m bench.compare`, end to end and small: both systems start, every phase
measures, nothing is lost, duplicated or reordered, and everything is torn down.

On the suite's backends: fakeredis's TCP server and SQLite by default, the real Redis
and PostgreSQL when LONGTAIL_TEST_REDIS_URL / LONGTAIL_TEST_DATABASE_URL are set (the
bench then creates and drops a database of its own on that server).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import REAL_DATABASE_URL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
RUN_DEADLINE = 200  # seconds; the run itself takes 30-50 s, ~100 s while other work loads the box
TINY = [
    "--held-max", "200",
    "--open-batch", "25",
    "--rate", "50",
    "--duration", "2",
    "--pairs", "10",
    "--senders", "4",
    "--fanout-members", "10",
    "--fanout-repeats", "3",
]  # fmt: skip
LONGTAIL = ("long-poll", "sse", "websocket")
SOCKETIO = ("websocket", "polling")


@pytest.fixture(scope="module")
def run(e2e_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("compare")
    output, chart = workdir / "compare.json", workdir / "compare.png"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.compare",
            *TINY,
            "--redis-url",
            e2e_redis_url,
            "--database-url",
            REAL_DATABASE_URL or "sqlite",
            "--output",
            str(output),
            "--chart",
            str(chart),
            "--log-dir",
            str(workdir / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert chart.stat().st_size > 10_000
    assert "LT/sio" in completed.stdout
    return {**json.loads(output.read_text()), "stdout": completed.stdout}


def systems() -> list[tuple[str, str]]:
    return [("longtail", t) for t in LONGTAIL] + [("socketio", t) for t in SOCKETIO]


@pytest.mark.parametrize(("system", "transport"), systems())
def test_every_phase_measured_and_audited_clean(run: dict, system: str, transport: str):
    result = run[system]
    held = result["held"][transport]
    assert held["errors"] == [] and held["returned_early"] == 0
    assert held["steps"][-1]["held"] == 200
    assert 0 < held["steps"][-1]["kib_per_conn"] < 500
    for phase in ("latency", "throughput"):
        measured = result[phase][transport]
        summary = measured["summary"]
        assert summary["sent"] > 0 and summary["received"] == summary["sent"]
        assert 0 < summary["p50_ms"] <= summary["p99_ms"] < 10_000
        assert measured["delivered_per_s"] > 0
        assert measured["server_cpu_ms_per_event"] > 0
        assert measured["failures"] == 0
    latency = result["latency"][transport]["summary"]
    assert latency["sent"] >= 50  # 100 scheduled at 50 msg/s for 2 s, whatever the box
    fanout = result["fanout"][transport]
    assert fanout["members"] == 10 and fanout["repeats"] == 3
    assert fanout["all_members"]["median_ms"] is not None
    assert 0 < fanout["first_member"]["p50_ms"] <= fanout["all_members"]["p99_ms"] < 10_000
    for phase in ("latency", "throughput"):
        summary = result[phase][transport]["summary"]
        assert summary["lost"] == summary["duplicated"] == summary["out_of_order"] == 0
    audit = fanout["audit"]
    assert audit["lost"] == audit["duplicated"] == audit["out_of_order"] == 0
    assert audit["received"] == 30


def test_ratios_failures_and_teardown(run: dict):
    assert run["failures"] == [] and run["unmeasured"] == [] and run["unclean_exits"] == []
    assert run["socketio_findings"] == []
    metrics = {row["metric"] for row in run["ratios"]}
    assert {"held_kib_per_conn", "latency_p99_ms", "throughput_per_s"} <= metrics
    for row in run["ratios"]:
        assert row["ratio"] is not None and row["ratio"] > 0, row
    assert run["config"]["database"] == ("postgresql" if REAL_DATABASE_URL else "sqlite")
