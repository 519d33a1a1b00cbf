"""A request as the front end parsed it (proxy.Incoming), and its body as it arrives.

A body up to upstream.buffer_request_body is read whole before the request is served, so a slow uploader
holds no bot connection (nginx's proxy_request_buffering). A larger one streams: RequestBody then pauses
the client's socket above HIGH_WATER buffered bytes, so back-pressure from the bot reaches the client.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from multidict import CIMultiDictProxy

from gateway.edge.chunks import HIGH_WATER, Chunks
from gateway.errors import GatewayError

_JOIN_BELOW: Final = 4096  # bytes: pieces of a buffered body smaller than this are joined as they come

if TYPE_CHECKING:
    from gateway.edge.front_connection import HttpConnection


class RequestBody(Chunks):
    """The body's bytes in arrival order; readexactly() and iter_any() as aiohttp's StreamReader."""

    __slots__ = ("_conn", "_tail", "received", "streaming")

    def __init__(self, conn: HttpConnection | None) -> None:
        super().__init__(conn.loop if conn is not None else None)
        self._conn = conn
        self._tail: bytearray | None = None  # small pieces joined while the body is buffered whole
        self.received = 0  # bytes received in all
        self.streaming = False  # served before it was complete: back-pressure applies

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        self.received += len(data)
        if self.streaming:
            self._chunks.append(data)
            if self._size > HIGH_WATER and self._conn is not None:
                self._conn.pause_for_body()
            self._wake()
        elif self._tail is not None:
            self._tail += data
            if len(self._tail) >= _JOIN_BELOW:
                self._chunks.append(bytes(self._tail))
                self._tail = None
        elif self._chunks and len(data) < _JOIN_BELOW:
            # Buffered whole, a body in tiny chunks (2-byte chunked framing) would be one ~50-byte object per
            # piece, 28 times its size: small pieces after the first are joined. A body in one piece (the
            # usual) is not copied.
            self._tail = bytearray(data)
        else:
            self._chunks.append(data)

    def stream(self) -> None:
        """Serve the body as it comes (back-pressure applies from now)."""
        self._join()
        self.streaming = True

    def feed_eof(self) -> None:
        self._join()
        super().feed_eof()

    def _join(self) -> None:
        if self._tail is not None:
            self._chunks.append(bytes(self._tail))
            self._tail = None

    def fail(self, exc: BaseException) -> None:
        """The body cannot be had: its reader gets `exc` (a timeout, a limit, a malformed chunk)."""
        if not self.complete:
            self.set_exception(exc)

    def _drained(self) -> None:
        if self._conn is not None:
            self._conn.resume_for_body()

    def whole(self) -> bytes:
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._size = 0
        return data

    async def readexactly(self, n: int) -> bytes:
        if self.complete and self._size == n:  # the common case: a body buffered whole before serving
            return self.whole()
        return await self._read_parts(n)


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
