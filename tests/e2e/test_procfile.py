"""The Procfile's roles start and serve, run as honcho runs them (PORT per process)."""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

import pytest

from tests.client import Client
from tests.e2e.cluster import Cluster, Proc, base_env, free_port

pytestmark = pytest.mark.e2e

PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"


def roles() -> dict[str, list[str]]:
    lines = [
        line
        for line in PROCFILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {
        name.strip(): shlex.split(command)
        for name, command in (line.split(":", 1) for line in lines)
    }


async def test_procfile_roles_run_a_working_chat(e2e_redis_url, e2e_database_url, tmp_path, http):
    procfile = roles()
    assert set(procfile) == {"chatcore", "gateway"}
    env = base_env(e2e_redis_url, e2e_database_url, f"pf{uuid.uuid4().hex[:6]}")
    env["CHATCORE_URL"] = f"http://127.0.0.1:{free_port()}"
    procs = [
        Proc(
            "chatcore",
            procfile["chatcore"],
            {**env, "PORT": str(free_port())},
            tmp_path / "chatcore.log",
            env["CHATCORE_URL"],
            "/internal/health",
        )
    ]
    for i in range(2):
        port = free_port()
        procs.append(
            Proc(
                f"gateway{i}",
                procfile["gateway"],
                {**env, "PORT": str(port)},
                tmp_path / f"gateway{i}.log",
                f"http://127.0.0.1:{port}",
                "/readyz",
            )
        )
    cluster = Cluster(tmp_path, env)
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            await cluster.wait_ready(proc)
        alice = await Client(http, procs[1].url).signup(f"pa{uuid.uuid4().hex[:6]}")
        bob = await Client(http, procs[2].url).signup(f"pb{uuid.uuid4().hex[:6]}")
        await alice.befriend(bob)
        assert (await alice.send(bob, "from the Procfile")).status == 201
        assert [e["type"] for e in await bob.poll(timeout=0)][-1] == "message"
    finally:
        for proc in procs:
            proc.stop()
