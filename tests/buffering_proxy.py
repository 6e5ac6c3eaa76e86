"""An HTTP proxy that buffers whole responses and cannot upgrade to WebSocket: what an
old corporate proxy does to streams. Long-polls get through it; streams never start."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

HOP_BY_HOP = {
    "connection",
    "upgrade",
    "keep-alive",
    "transfer-encoding",
    "host",
    "content-length",
    "content-encoding",
}


class BufferingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.port = 0
        self.pending: set[asyncio.Task[object]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> BufferingProxy:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        # The streams it is still buffering would otherwise run for their whole life.
        for task in self.pending:
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        task = asyncio.current_task()
        if task is not None:
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with self.session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=await request.read(),
                timeout=aiohttp.ClientTimeout(total=120),
            ) as upstream:
                body = await upstream.read()  # the whole response, however long it takes
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=upstream.status, body=body, headers=out)
        except (aiohttp.ClientError, RuntimeError):
            return web.Response(status=502)
