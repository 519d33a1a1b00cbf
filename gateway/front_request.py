"""A request as the front end parsed it (proxy.Incoming), and its body as it arrives.

A body up to upstream.buffer_request_body is read whole before the request is served, so a slow uploader
holds no bot connection (nginx's proxy_request_buffering). A larger one streams: RequestBody then pauses
the client's socket above HIGH_WATER buffered bytes, so back-pressure from the bot reaches the client.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from multidict import CIMultiDictProxy

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.front_connection import HttpConnection

# Envoy's edge guidance: 32 KiB per connection and direction (per_connection_buffer_limit_bytes).
HIGH_WATER: Final = 32 * 1024
LOW_WATER: Final = 8 * 1024


class RequestBody:
    """The body's bytes in arrival order; readexactly() and iter_any() as aiohttp's StreamReader."""

    __slots__ = ("_chunks", "_conn", "_exc", "_size", "_waiter", "complete", "received", "streaming")

    def __init__(self, conn: HttpConnection | None) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0  # bytes buffered now
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.received = 0  # bytes received in all
        self.complete = False
        self.streaming = False  # served before it was complete: back-pressure applies

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self.streaming:
            if self._size > HIGH_WATER and self._conn is not None:
                self._conn.pause_for_body()
            self._wake()

    def finish(self) -> None:
        self.complete = True
        if self._waiter is not None:
            self._wake()

    def fail(self, exc: BaseException) -> None:
        """The body cannot be had: its reader gets `exc` (a timeout, a limit, a malformed chunk)."""
        if not self.complete:
            self._exc = exc
            self._wake()

    def whole(self) -> bytes:
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._size = 0
        return data

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The next chunk as received, or b"" at the end."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self.complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._size < LOW_WATER and self._conn is not None:
            self._conn.resume_for_body()
        return data

    async def readexactly(self, n: int) -> bytes:
        if self.complete and self._size == n:  # the common case: a body buffered whole before serving
            return self.whole()
        parts: list[bytes] = []
        got = 0
        while got < n:
            data = await self.read()
            if not data:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while data := await self.read():
            yield data


NO_BODY: Final = RequestBody(None)  # shared by requests without a body: complete, and never fed
NO_BODY.complete = True


class Request:
    """One parsed request head, with its body (see proxy.Incoming for what the proxy reads)."""

    __slots__ = (
        "body_exists",
        "close",
        "content",
        "content_length",
        "expect_continue",
        "headers",
        "method",
        "raw_path",
        "refusal",
        "remote",
        "transport",
        "upgrade",
        "version",
    )

    scheme: Final = "http"

    def __init__(
        self,
        conn: HttpConnection,
        method: str,
        raw_path: str,
        version: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        body_exists: bool,
        close: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.content_length = content_length  # declared; set to the size read once a body is read whole
        self.body_exists = body_exists
        self.close = close  # the client asked for the connection to end after this exchange
        self.content = RequestBody(conn) if body_exists else NO_BODY
        self.remote = conn.remote
        self.transport: asyncio.Transport | None = conn.transport
        self.refusal: GatewayError | None = None  # answered with this error instead of being served
        self.expect_continue = False
        self.upgrade: bytes | None = None  # a WebSocket handshake: the bytes after its head, for aiohttp
