"""Tornado's event loop with one fewer pair of system calls per request or frame read.

When one of Tornado's reads completes with bytes still buffered (an HTTP request's
headers, with its body right behind them), its IOStream stops listening on the socket,
and starts again a moment later when the next read takes those bytes: two `epoll_ctl`
calls and asyncio's selector bookkeeping each time, 8% of the sending gateway's samples
under POSTs (issue 5). Here a reader is dropped only once the socket turns readable while
nobody wants to read it, so the usual stop-then-start costs nothing, and Tornado's
handlers still never see an event they did not ask for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop
from tornado.platform.asyncio import AsyncIOMainLoop


class LazyReaders(AsyncIOMainLoop):
    """AsyncIOMainLoop that keeps a reader registered until it would fire unwanted."""

    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]  # as Tornado's own
        # Sockets still registered for reading that Tornado no longer reads from.
        self._unwanted: set[int] = set()
        super().initialize(**kwargs)

    def update_handler(self, fd: Any, events: int) -> None:
        number, _ = self.split_fd(fd)
        if events & IOLoop.READ:
            self._unwanted.discard(number)
        elif number in self.readers:
            self._unwanted.add(number)
            events |= IOLoop.READ
        super().update_handler(fd, events)

    def add_handler(self, fd: Any, handler: Callable[..., None], events: int) -> None:
        # A new socket may reuse the number of one closed without remove_handler.
        self._unwanted.discard(self.split_fd(fd)[0])
        super().add_handler(fd, handler, events)

    def remove_handler(self, fd: Any) -> None:
        number, _ = self.split_fd(fd)
        self._unwanted.discard(number)
        super().remove_handler(fd)

    def _handle_events(self, fd: int, events: int) -> None:
        if events & IOLoop.READ and fd in self._unwanted:
            # Readable, and nobody reads: now the reader goes, as Tornado asked, and the
            # bytes wait in the kernel until a read wants them.
            self._unwanted.discard(fd)
            self.selector_loop.remove_reader(fd)
            self.readers.discard(fd)
            return
        super()._handle_events(fd, events)


def install() -> IOLoop:
    """Make LazyReaders Tornado's loop on the running asyncio loop, before any server or
    stream is made on it (each takes the current IOLoop when made)."""
    asyncio.get_running_loop()  # a loop must run: LazyReaders attaches to it
    existing = IOLoop.current(instance=False)
    if existing is not None:
        if not isinstance(existing, LazyReaders):
            raise RuntimeError("Tornado already has a plain IOLoop on this asyncio loop")
        return existing
    return LazyReaders()
