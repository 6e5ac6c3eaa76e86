"""Hosts of the test's own, made of Linux network namespaces joined by veth pairs.

Each host is a namespace with one address (10.X.k.2) and a veth link to the test's own
namespace (10.X.k.1 on our side), its default route. Shared services listen on
addresses of an interface on our side (10.X.0.n), reached from every host over its
link without any forwarding. (Those addresses sit on a veth pair kept in our namespace:
a dummy interface would do, but its kernel module is not always there.) Everything is
created with `ip` and removed by `close()`.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid


class NamespacesUnavailable(RuntimeError):
    """This sandbox does not let us create network namespaces."""


def ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise NamespacesUnavailable(f"`{' '.join(command)}`: {done.stderr.strip()}")


class Hosts:
    def __init__(self, count: int) -> None:
        if shutil.which("ip") is None:
            raise NamespacesUnavailable("the `ip` command (iproute2) is not installed")
        tag = uuid.uuid4().hex[:6]
        self.net = random.randint(100, 250)
        self.dummy = f"lt{tag}d"
        self.names = [f"lt{tag}h{k}" for k in range(1, count + 1)]
        self._services = 0
        self._made: list[str] = []
        try:
            ip("link", "add", self.dummy, "type", "veth", "peer", "name", f"lt{tag}e")
            self._made.append(self.dummy)
            ip("link", "set", self.dummy, "up")
            ip("link", "set", f"lt{tag}e", "up")
            for k, name in enumerate(self.names, start=1):
                ip("netns", "add", name)
                self._made.append(name)
                ours, theirs = f"lt{tag}a{k}", f"lt{tag}b{k}"
                ip("link", "add", ours, "type", "veth", "peer", "name", theirs)
                ip("link", "set", theirs, "netns", name)
                ip("addr", "add", f"{self.gateway_side(k)}/24", "dev", ours)
                ip("link", "set", ours, "up")
                ip("addr", "add", f"{self.address(k)}/24", "dev", theirs, netns=name)
                ip("link", "set", theirs, "up", netns=name)
                ip("link", "set", "lo", "up", netns=name)
                ip("route", "add", "default", "via", self.gateway_side(k), netns=name)
        except BaseException:
            self.close()
            raise

    def address(self, k: int) -> str:
        """Host k's own address (k from 1)."""
        return f"10.{self.net}.{k}.2"

    def gateway_side(self, k: int) -> str:
        return f"10.{self.net}.{k}.1"

    def service_address(self) -> str:
        """A new address on our side for one shared service, reachable from every host."""
        self._services += 1
        address = f"10.{self.net}.0.{self._services}"
        ip("addr", "add", f"{address}/32", "dev", self.dummy)
        return address

    def exec_prefix(self, k: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[k - 1]]

    def cut(self, k: int, address: str) -> None:
        """Host k can no longer reach `address`: its packets there are refused at once."""
        ip("route", "add", "prohibit", f"{address}/32", netns=self.names[k - 1])

    def heal(self, k: int, address: str) -> None:
        ip("route", "del", "prohibit", f"{address}/32", netns=self.names[k - 1])

    def close(self) -> None:
        for made in reversed(self._made):
            if made == self.dummy:
                subprocess.run(["ip", "link", "del", made], capture_output=True, check=False)
            else:
                subprocess.run(["ip", "netns", "del", made], capture_output=True, check=False)
        self._made.clear()
