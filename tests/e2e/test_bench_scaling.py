"""`python -m bench.scaling`, end to end and tiny: every configuration measured, every
event delivered once and in order, the capacity model filled in.

The bench starts its own redis-servers (never the suite's Redis). Its database is a
SQLite file by default, or a database of its own on the PostgreSQL server of
LONGTAIL_TEST_DATABASE_URL when that is set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import REAL_DATABASE_URL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
RUN_DEADLINE = 100  # seconds; about 25 s on 2 busy cores
TINY = [
    "--gateways", "1,2",
    "--redis", "single",
    "--receivers", "30",
    "--rate", "200",
    "--duration", "2",
    "--repeats", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("scaling")
    output = workdir / "scaling.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scaling",
            *TINY,
            "--database-url",
            REAL_DATABASE_URL or "sqlite",
            "--output",
            str(output),
            "--log-dir",
            str(workdir / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Capacity model" in completed.stdout
    return dict(json.loads(output.read_text()))


def test_every_configuration_measured_and_delivered_once(run: dict):
    (topology,) = run["topologies"]
    assert topology["kind"] == "single" and topology["unclean_exits"] == []
    assert [c["gateways"] for c in topology["configurations"]] == [1, 2]
    for config in topology["configurations"]:
        audit = config["audit"]
        assert audit["sent"] == 400 and audit["received"] == 400
        assert audit["lost"] == audit["duplicated"] == audit["out_of_order"] == 0
        assert audit["seq_gaps"] == 0 and audit["receive_errors"] == []
        median = config["median"]
        assert len(median["gateways"]) == config["gateways"]
        assert median["delivered"] == 400
        assert all(us is not None and us > 0 for us in median["gateways"].values())
        assert median["redis_primaries_us_per_delivery"] > 0
        assert median["redis_replicas_us_per_delivery"] is None  # a single server
    assert run["failures"] == []


def test_capacity_model_sized_from_the_measurement(run: dict):
    model = run["capacity"]
    assert model["measured"]["gateway_us_per_delivery"] > 0
    assert model["measured"]["primary_source"] == "single server"
    small, large = model["sizes"]
    assert (small["users"], large["users"]) == (100_000, 1_000_000)
    # Never fewer gateways than the held connections need (15,000 per process).
    assert small["gateway_processes"] >= 7 and large["gateway_processes"] >= 67
    assert large["redis_primaries"] >= small["redis_primaries"] >= 1
    assert run["config"]["database"] == ("postgresql" if REAL_DATABASE_URL else "sqlite")
