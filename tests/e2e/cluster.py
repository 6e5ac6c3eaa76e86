"""chatcore and N gateways as separate processes, started the way ops start them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def longtail_command() -> str:
    path = shutil.which("longtail")
    if path is None:
        raise RuntimeError("the `longtail` command is not installed: pip install -e .")
    return path


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    url: str
    ready_path: str
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            self.popen.wait(timeout=15)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Cluster:
    workdir: Path
    env: dict[str, str]
    chatcore: Proc = field(init=False)
    gateways: list[Proc] = field(default_factory=list)

    @classmethod
    def build(cls, workdir: Path, env: dict[str, str], gateways: int = 3) -> Cluster:
        cluster = cls(workdir, env)
        exe = longtail_command()
        core_port = free_port()
        cluster.env["CHATCORE_URL"] = f"http://127.0.0.1:{core_port}"
        cluster.chatcore = Proc(
            "chatcore",
            [exe, "chatcore"],
            dict(cluster.env),
            workdir / "chatcore.log",
            cluster.env["CHATCORE_URL"],
            "/internal/health",
        )
        for i in range(gateways):
            port = free_port()
            cluster.gateways.append(
                Proc(
                    f"gateway{i + 1}",
                    [exe, "gateway", "--port", str(port)],
                    dict(cluster.env),
                    workdir / f"gateway{i + 1}.log",
                    f"http://127.0.0.1:{port}",
                    "/readyz",
                )
            )
        return cluster

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    async def start(self) -> None:
        self.chatcore.start()
        await self.wait_ready(self.chatcore)
        for gateway in self.gateways:
            gateway.start()
        for gateway in self.gateways:
            await self.wait_ready(gateway)

    async def restart(self, proc: Proc) -> None:
        proc.stop()
        proc.start()
        await self.wait_ready(proc)

    async def wait_ready(self, proc: Proc, deadline: float = 30) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        async with aiohttp.ClientSession() as http:
            while loop.time() < end:
                if proc.popen is not None and proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
                try:
                    async with http.get(
                        proc.url + proc.ready_path, timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        if resp.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{proc.name} not ready after {deadline}s:\n{proc.log_tail()}")

    def stop(self) -> None:
        for proc in [*self.gateways, self.chatcore]:
            proc.stop()


def base_env(redis_url: str, database_url: str, prefix: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LONGTAIL_", "REDIS_", "DATABASE_"))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "LONGTAIL_SECRET": "e2e-secret",
            "LONGTAIL_REDIS_PREFIX": prefix,
            "HOST": "127.0.0.1",
            "LONGTAIL_ARGON2_TIME_COST": "1",
            "LONGTAIL_ARGON2_MEMORY_KIB": "64",
            "LONGTAIL_POLL_TIMEOUT": "5",
            "LONGTAIL_LOG_LEVEL": "WARNING",
        }
    )
    return env
