"""A body as it arrives, read in order, with back-pressure by water marks: the request body a client streams
(front_request.py) and the response body a bot sends (upstream_client.py) are both one of these."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Final

# Envoy's edge guidance: 32 KiB per connection and direction (per_connection_buffer_limit_bytes). Past
# HIGH_WATER buffered bytes the sending socket is paused; below LOW_WATER it is read again.
HIGH_WATER: Final = 32 * 1024
LOW_WATER: Final = 8 * 1024


class Chunks:
    """Chunks in arrival order. Subclasses feed them (pausing their socket above HIGH_WATER) and say in
    `_drained` how reading resumes once a reader has taken the buffer below LOW_WATER."""

    __slots__ = ("_chunks", "_exc", "_loop", "_size", "_waiter", "complete")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop  # given: on Python 3.11 asyncio.get_running_loop() asks the kernel for the pid
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0  # bytes buffered now
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False  # the last chunk has been fed

    def feed_eof(self) -> None:
        self.complete = True
        if self._waiter is not None:
            self._wake()

    def set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drained(self) -> None:
        """Fewer than LOW_WATER bytes are buffered after a read."""

    async def read(self) -> bytes:
        """The next chunk as received, or b"" at the end."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self.complete:
                return b""
            loop = self._loop or asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._size < LOW_WATER:
            self._drained()
        return data

    async def _read_parts(self, n: int) -> bytes:
        """Exactly n bytes, from as many chunks as it takes."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            data = await self.read()
            if not data:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(data)
            got += len(data)
        return parts[0][:n] if len(parts) == 1 else b"".join(parts)[:n]  # n == 0: no parts, b""

    async def iter_any(self) -> AsyncIterator[bytes]:
        while data := await self.read():
            yield data

    async def iter_chunks(self) -> AsyncIterator[tuple[bytes, bool]]:
        """aiohttp's StreamReader.iter_chunks shape: (data, end_of_http_chunk)."""
        while data := await self.read():
            yield data, False

    @property
    def at_eof(self) -> bool:
        return self.complete and not self._chunks
