"""Debian's Chromium driven by Playwright (no downloaded browser), and a page helper."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from tests.waiting import eventually

# As root in a container, and with no network beyond loopback: no sandbox, and none of
# the background traffic Chromium would otherwise try (and fail) to send.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it from Debian's packages")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


START_CLIENT = """async (options) => {
  window.got = []; window.statuses = []; window.fallbacks = []; window.pwned = false;
  window.alert = () => { window.pwned = true; };
  const lt = new window.longtail.Longtail(options);
  lt.on("*", (event) => window.got.push(event));
  lt.on("status", (status) => window.statuses.push(status));
  lt.on("fallback", (step) => window.fallbacks.push(step));
  window.lt = lt;
  return await lt.start();
}"""

LOGIN = """async ([username, password]) => {
  const response = await fetch("/api/login", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username, password}),
  });
  if (!response.ok) throw new Error(await response.text());
  return (await response.json()).token;
}"""


async def wait_until(page: Any, expression: str, arg: Any = None, timeout: float = 15) -> None:
    """Poll `expression` (a JS function of `arg`) through page.evaluate until it is true.

    Not Playwright's wait_for_function: its polling evaluates the predicate with eval()
    inside the page, which the pages' Content-Security-Policy rightly forbids.
    """
    await eventually(lambda: page.evaluate(expression, arg), deadline=timeout, what=expression)


class BrowserUser:
    """A page on one gateway's origin, logged in, with a Longtail client in it."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.dialogs: list[str] = []
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    async def open(self, origin: str, username: str, password: str) -> BrowserUser:
        await self.page.goto(origin + "/console.html")
        await wait_until(self.page, "() => window.longtail !== undefined")
        await self.page.evaluate(LOGIN, [username, password])
        return self

    async def start(self, **options: Any) -> str:
        return await self.page.evaluate(START_CLIENT, options)

    async def wait_messages(self, n: int, timeout: float = 15) -> list[dict[str, Any]]:
        await wait_until(
            self.page, "n => window.got.filter(e => e.type === 'message').length >= n", n, timeout
        )
        return await self.page.evaluate("window.got")

    async def value(self, expression: str) -> Any:
        return await self.page.evaluate(expression)
