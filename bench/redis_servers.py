"""Throw-away Redis topologies on loopback: a Cluster, or a primary watched by Sentinels.

Used by the tests (a private cluster to kill a primary of), by `.ci/run` (a shared
cluster and a shared Sentinel setup the delivery tests run against) and by the scaling
benchmark. Every server is `redis-server` on a free 127.0.0.1 port, keeps nothing on
disk that outlives its work directory, and is stopped by `stop()` (or by
`python -m bench.redis_servers stop DIR`).

    python -m bench.redis_servers cluster DIR     # prints redis+cluster://...
    python -m bench.redis_servers sentinel DIR    # prints redis+sentinel://...
    python -m bench.redis_servers stop DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
SERVICE = "longtail"
# Failure detection: a primary unreachable this long is failed over. Short, so a test
# sees the promotion within seconds; production uses Redis's defaults.
NODE_TIMEOUT_MS = 1500
SENTINEL_DOWN_MS = 1500
START_DEADLINE = 30.0
STATE_FILE = "servers.json"
# The servers this process started, so kill() can reap them (a Popen dropped while its
# child runs warns; one started by another process is killed by pid alone).
_children: dict[int, subprocess.Popen[bytes]] = {}


class TopologyError(RuntimeError):
    """A topology did not come up as asked."""


def free_port() -> int:
    """A free port whose +10000 (Cluster's bus port) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((HOST, port + 10000))
            except OSError:
                continue
        return port


def redis_cli(port: int, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise TopologyError(f"redis-cli -p {port} {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def wait_until(what: str, check: object, deadline: float = START_DEADLINE) -> None:
    """Poll `check()` (a callable returning truthy) until it holds or time runs out."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            if check():  # type: ignore[operator]
                return
        except (TopologyError, OSError, subprocess.TimeoutExpired) as exc:
            last = exc
        time.sleep(0.1)
    raise TopologyError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))


@dataclass
class Server:
    """One redis-server (a data node or a Sentinel) and how to start it again."""

    port: int
    argv: list[str]
    pid: int = 0

    def start(self, workdir: Path) -> None:
        log = open(workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            self.argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.pid = proc.pid
        _children[proc.pid] = proc
        wait_until(f"redis on port {self.port}", lambda: redis_cli(self.port, "PING") == "PONG")

    def kill(self) -> None:
        """SIGKILL: the abrupt loss of a host, not a graceful shutdown."""
        if not self.pid:
            return
        proc = _children.pop(self.pid, None)
        if proc is not None:
            proc.kill()
            proc.wait()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = 0

    @property
    def alive(self) -> bool:
        if not self.pid:
            return False
        proc = _children.get(self.pid)
        if proc is not None:
            return proc.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True


def data_node_argv(port: int, *extra: str, bind: str = HOST) -> list[str]:
    return [
        "redis-server",
        "--bind",
        bind,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        *extra,
    ]


@dataclass
class Topology:
    kind: str
    workdir: str
    url: str = ""
    nodes: list[Server] = field(default_factory=list)
    sentinels: list[Server] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.workdir)

    def save(self) -> None:
        (self.path / STATE_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, workdir: Path) -> Topology:
        raw = json.loads((workdir / STATE_FILE).read_text())
        return cls(
            kind=raw["kind"],
            workdir=raw["workdir"],
            url=raw["url"],
            nodes=[Server(**n) for n in raw["nodes"]],
            sentinels=[Server(**s) for s in raw["sentinels"]],
        )

    def stop(self) -> None:
        for server in self.sentinels + self.nodes:
            server.kill()

    def node(self, port: int) -> Server:
        return next(n for n in self.nodes if n.port == port)

    # -- Cluster ----------------------------------------------------------------

    def primaries(self) -> list[int]:
        """Ports of the nodes that are primaries now (asked of any live node)."""
        for server in self.nodes:
            if not server.alive:
                continue
            lines = redis_cli(server.port, "CLUSTER", "NODES").splitlines()
            return sorted(
                int(line.split()[1].split(":")[1].split("@")[0])
                for line in lines
                if "master" in line.split()[2] and "fail" not in line.split()[2]
            )
        raise TopologyError("no live cluster node")

    def cluster_ok(self) -> bool:
        return all(
            "cluster_state:ok" in redis_cli(n.port, "CLUSTER", "INFO")
            for n in self.nodes
            if n.alive
        )

    # -- Sentinel ---------------------------------------------------------------

    def sentinel_primary(self) -> int:
        """The port Sentinel currently names as the primary."""
        for sentinel in self.sentinels:
            if sentinel.alive:
                answer = redis_cli(
                    sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE
                ).split()
                return int(answer[1])
        raise TopologyError("no live sentinel")


def start_cluster(workdir: Path, primaries: int = 3, replicas: int = 1) -> Topology:
    """A Redis Cluster of `primaries` primaries with `replicas` replicas each."""
    workdir.mkdir(parents=True, exist_ok=True)
    topo = Topology("cluster", str(workdir))
    try:
        for _ in range(primaries * (1 + replicas)):
            port = free_port()
            argv = data_node_argv(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # Other slots keep serving while one range fails over.
                "--cluster-require-full-coverage",
                "no",
                "--dir",
                str(workdir),
            )
            server = Server(port, argv)
            server.start(workdir)
            topo.nodes.append(server)
        addresses = [f"{HOST}:{n.port}" for n in topo.nodes]
        create = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if create.returncode != 0:
            raise TopologyError(f"cluster create failed: {create.stdout[-500:]}{create.stderr}")
        wait_until("cluster state ok", topo.cluster_ok)
        wait_until(
            "every replica attached",
            lambda: (
                len(topo.primaries()) == primaries
                and all(
                    "master_link_status:up" in redis_cli(n.port, "INFO", "replication")
                    for n in topo.nodes
                    if n.port not in topo.primaries()
                )
            ),
        )
    except BaseException:
        topo.stop()
        raise
    seeds = ",".join(f"{HOST}:{n.port}" for n in topo.nodes[:primaries])
    topo.url = f"redis+cluster://{seeds}"
    topo.save()
    return topo


def start_sentinel(workdir: Path, replicas: int = 1, sentinels: int = 3) -> Topology:
    """One primary, `replicas` replicas, and `sentinels` Sentinels watching them."""
    workdir.mkdir(parents=True, exist_ok=True)
    topo = Topology("sentinel", str(workdir))
    try:
        primary = Server(free_port(), [])
        primary.argv = data_node_argv(primary.port, "--dir", str(workdir))
        primary.start(workdir)
        topo.nodes.append(primary)
        for _ in range(replicas):
            port = free_port()
            replica = Server(
                port,
                data_node_argv(port, "--dir", str(workdir), "--replicaof", HOST, str(primary.port)),
            )
            replica.start(workdir)
            topo.nodes.append(replica)
        quorum = sentinels // 2 + 1
        for _ in range(sentinels):
            port = free_port()
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind {HOST}\nprotected-mode no\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} {HOST} {primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} {SENTINEL_DOWN_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            sentinel = Server(port, ["redis-server", str(conf), "--sentinel"])
            sentinel.start(workdir)
            topo.sentinels.append(sentinel)
        wait_until(
            "sentinels to see the replicas and each other",
            lambda: all(
                _sentinel_view(s.port) >= (replicas, sentinels - 1) for s in topo.sentinels
            ),
        )
    except BaseException:
        topo.stop()
        raise
    hosts = ",".join(f"{HOST}:{s.port}" for s in topo.sentinels)
    topo.url = f"redis+sentinel://{hosts}/{SERVICE}/0"
    topo.save()
    return topo


def _sentinel_view(port: int) -> tuple[int, int]:
    """(replicas, other sentinels) that one Sentinel knows about."""
    fields = redis_cli(port, "SENTINEL", "MASTER", SERVICE).splitlines()
    info = dict(zip(fields[::2], fields[1::2], strict=False))
    return int(info.get("num-slaves", 0)), int(info.get("num-other-sentinels", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_servers", description=__doc__)
    parser.add_argument("what", choices=("cluster", "sentinel", "stop"))
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if args.what == "stop":
        Topology.load(workdir).stop()
        return 0
    try:
        topo = start_cluster(workdir) if args.what == "cluster" else start_sentinel(workdir)
    except TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(topo.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
