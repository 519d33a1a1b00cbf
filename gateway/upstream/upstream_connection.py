"""One keep-alive connection to a bot, as an asyncio protocol parsing responses with httptools (llhttp).

One request at a time; the response's head is a future, its body a `Body` that pauses the bot's socket above
HIGH_WATER buffered bytes. One read timer per connection (see `_check_timeout`). Any byte or EOF from the bot
between exchanges, or after a complete response, closes the connection: it is never reused (upstream_client.py
pools these).
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

import httptools
from multidict import CIMultiDict

from gateway.edge.chunks import HIGH_WATER, Chunks


class UpstreamDisconnected(ConnectionError):
    """The upstream closed the connection before the response was complete."""


class UpstreamProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.1."""


class _EndOfExchange(Exception):
    """Raised in a parser callback: what follows is not this exchange's (a HEAD's head is its end; a second
    message where none belongs is a bot's stray bytes)."""


class Body(Chunks):
    """The response body as it arrives; pauses the bot's socket above HIGH_WATER buffered bytes."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn.loop)
        self._conn = conn

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause_reading()
        if self._waiter is not None:  # usually None: a chat turn's body arrives with its head
            self._wake()

    def _drained(self) -> None:
        self._conn.resume_reading()

    async def readexactly(self, n: int) -> bytes:
        if self._size == n and len(self._chunks) == 1:  # the common case: the whole body came in one read
            self._size = 0
            self._conn.resume_reading()  # a no-op unless a body over HIGH_WATER paused the socket
            return self._chunks.popleft()
        return await self._read_parts(n)


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, read_timeout: float, origin_key: tuple[str, str, int]) -> None:
        self.origin_key = origin_key
        self.loop = asyncio.get_running_loop()
        self._read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0
        self.in_exchange = False  # a request is on this connection (from begin() to its release)
        self.sending = False  # the request body is still being written: the bot's silence is expected
        self._head_only = False  # the exchange is a HEAD: the response has no body whatever it declares
        self._parser = httptools.HttpResponseParser(self)
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self.head: asyncio.Future[tuple[int, str, CIMultiDict[str]]] = self.loop.create_future()
        self.body = Body(self)
        self.complete = False
        self.keep_alive = False
        self._head_ok = False  # a final (non-1xx) response head was parsed
        self._framed = False  # its body has a Content-Length or chunked framing
        self.received = False
        self._in_headers = True
        self._last_activity = self.loop.time()

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.in_exchange or self.complete:
            self.keep_alive = False  # stray bytes on an idle or answered connection: never reuse it
            self.close()
            return
        self.received = True
        self._last_activity = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            self.close()  # _EndOfExchange: the exchange itself is complete, nothing after it is trusted
        except httptools.HttpParserUpgrade:
            # 101 to a request that asked for no upgrade (WebSocket handshakes go through aiohttp's client).
            self._fail(UpstreamProtocolError("the upstream switched protocols unasked"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid HTTP from the upstream: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport: an HTTP/1.1 upstream that half-closes is done with us

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        self._cancel_timer()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamDisconnected("the upstream closed the connection"))
        if self.complete:
            return
        if self._head_ok and not self._framed:
            self.complete = True  # a close-delimited body ends with the connection (RFC 9112 §6.3)
            self.body.feed_eof()
            return
        self._fail(
            UpstreamDisconnected("the upstream closed the connection before the response was complete")
        )

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        # As aiohttp decodes (and its server re-encodes) header bytes: UTF-8 passes through byte-exact.
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_message_begin(self) -> None:
        if self.complete:
            self.keep_alive = False
            raise _EndOfExchange()  # a second response where one was due: the bot's stray bytes stop here

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101:
            return  # llhttp stops at an upgrade: data_received fails the exchange
        if status < 200:
            self._headers, self._reason = [], ""  # 1xx (103 Early Hints): the real response follows
            return
        self._in_headers = False
        self._status = status
        self.keep_alive = self._parser.should_keep_alive()
        headers = CIMultiDict(self._headers)
        self._head_ok = True
        # RFC 9112 §6.3: with a Transfer-Encoding the body is chunked only if its last coding is, and else ends
        # with the connection (as llhttp reads it), whatever a Content-Length says.
        codings = headers.getall("Transfer-Encoding", ())
        if codings:
            self._framed = codings[-1].rsplit(",", 1)[-1].strip().lower() == "chunked"
        else:
            self._framed = "Content-Length" in headers
        if not self.head.done():
            self.head.set_result((status, self._reason, headers))
        if self._head_only:
            # httptools cannot be told that a HEAD response has no body, so the exchange ends at its head
            # and the connection with it (HEAD is rare on a bot's path: a new connection is cheap enough).
            self.keep_alive = False
            self.complete = True
            self.body.feed_eof()
            raise _EndOfExchange()

    def on_body(self, data: bytes) -> None:
        self.body.feed(data)

    def on_message_complete(self) -> None:
        if self._in_headers:
            return  # the end of a 1xx
        self.complete = True  # the read timer, if armed, finds the exchange complete and lapses
        self.body.feed_eof()

    # -- use ---------------------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: whoever awaits it still gets it; nobody gets a GC warning
        else:
            self.body.set_exception(exc)

    def begin(self, head_only: bool = False) -> None:
        """Prepare for the next request on this connection."""
        self.requests += 1
        self._reset()
        self.in_exchange = True
        self._head_only = head_only
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        self._timer = self.loop.call_at(self._last_activity + self._read_timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        # One timer per connection, re-armed only when it fires: data_received just records the time, and a
        # timer left from an earlier exchange re-arms for the current one (measured: scheduling and cancelling
        # a timer per request was ~3% of the proxy's CPU).
        if self.complete or self.closed:
            self._timer = None  # idle or gone: the next exchange arms a new one
            return
        # Our client is slow to read the answer, or to send the body while the bot reads it: not the bot's
        # silence. A bot that stops reading the body (our writes to it paused) is silent for its own part.
        if self._reading_paused or (self.sending and not self._paused):
            self._last_activity = self.loop.time()
        if self.loop.time() - self._last_activity >= self._read_timeout:
            self._fail(TimeoutError())
            self.close()
        else:
            self._arm()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamDisconnected("the upstream closed the connection")
        if self._paused:
            self._drain = self.loop.create_future()
            await self._drain

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
