"""Runs deploy/nginx.conf for real, pointed at the test's gateways and a free port."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, Proc

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"


def nginx_binary() -> str:
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; .ci/run installs it from Debian's packages")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return path


def render(upstreams: list[str], port: int) -> str:
    """deploy/nginx.conf with its upstream servers and listen port replaced."""
    text = CONFIG.read_text()
    servers = "".join(f"        server {u.removeprefix('http://')};\n" for u in upstreams)
    text, n = re.subn(r"(        server 127\.0\.0\.1:\d+;\n)+", servers, text)
    assert n == 1, "deploy/nginx.conf no longer has the upstream block the test rewrites"
    text, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    assert n == 1
    return text


class Nginx:
    def __init__(self, workdir: Path, upstreams: list[str], port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(render(upstreams, port))
        self.binary = nginx_binary()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self, *extra: str) -> list[str]:
        directives = (
            f"daemon off; pid {self.workdir}/nginx.pid; error_log {self.workdir}/error.log warn;"
        )
        return [
            self.binary,
            "-p",
            str(self.workdir),
            "-c",
            str(self.conf),
            "-g",
            directives,
            *extra,
        ]

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.args("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> None:
        (self.workdir / "logs").mkdir(exist_ok=True)
        with (self.workdir / "stderr.log").open("wb") as err:
            self.popen = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=err)

    async def wait_ready(self, cluster: Cluster) -> None:
        """Until nginx answers /readyz from a gateway behind it."""
        assert self.popen is not None
        await cluster.wait_ready(
            Proc("nginx", [], {}, self.workdir / "stderr.log", self.url, "/readyz", self.popen)
        )

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(timeout=10)
