"""The responses still streaming (SSE) and the WebSockets still open, so shutdown can end them cleanly."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from gateway.upstream.upstream_client import Response


class Streams:
    """Open SSE responses and WebSockets, so shutdown can close them with "going away"."""

    def __init__(self) -> None:
        self.responses: set[Response] = set()
        self.sockets: set[web.WebSocketResponse] = set()
        self.closing = False

    async def close_all(self) -> None:
        self.closing = True
        for upstream in list(self.responses):
            upstream.close()  # the read loop sees EOF and ends the client's stream cleanly
        await asyncio.gather(
            *(
                ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"gateway shutting down")
                for ws in self.sockets
            ),
            return_exceptions=True,
        )
