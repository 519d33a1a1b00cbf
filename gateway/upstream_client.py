"""A pooled HTTP/1.1 upstream client on asyncio protocols, parsing with httptools (llhttp).

Why not aiohttp's client: measured on the proxy's path, aiohttp's ClientSession machinery was most of the
plain proxy's per-request cost (about 165 of 217 µs, issue 6 and bench/). This client does only what a
reverse proxy needs: keep-alive pooling, a streamed or one-write request, a streamed response with
back-pressure, a connect timeout, a bounded wait for a connection, an inactivity (read) timeout, and one
retry of a request that met a stale pooled connection when that is safe. It is the proxy's one HTTP client,
HEAD included; WebSocket upgrades stay on aiohttp's client.

A pooled connection is trusted only while it is quiet: any byte or EOF from the bot between exchanges,
or bytes after a complete response, closes it, so nothing a bot leaves behind reaches the next user.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.chunks import HIGH_WATER, Chunks
from gateway.headers import content_length, encode_head

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamConnectError(ConnectionError):
    """The TCP (or TLS) connection to the upstream could not be opened in time."""


class UpstreamDisconnected(ConnectionError):
    """The upstream closed the connection before the response was complete."""


class UpstreamProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.1."""


class PoolBusy(Exception):
    """No connection to the origin became free within the queue timeout."""


class _EndOfExchange(Exception):
    """Raised in a parser callback: what follows is not this exchange's (a HEAD's head is its end; a second
    message where none belongs is a bot's stray bytes)."""


class Origin:
    """Where requests go: scheme, host, port, and the Host header value."""

    __slots__ = ("host", "host_header", "key", "port", "ssl")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname is not None
        self.host = parts.hostname
        default = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default else f"{host}:{self.port}"
        self.key = (parts.scheme, self.host, self.port)


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


class Response:
    """The subset of aiohttp.ClientResponse the proxy uses."""

    __slots__ = ("_pool", "conn", "content", "headers", "reason", "status")

    def __init__(
        self, pool: Pool, conn: Connection, status: int, reason: str, headers: CIMultiDict[str]
    ) -> None:
        self._pool = pool
        self.conn: Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = CIMultiDictProxy(headers)
        self.content = conn.body

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        if len(value) < 19 and value.isdigit():  # headers.content_length's usual case, without the call
            return int(value)
        return content_length(value)  # llhttp judged the value

    def release(self) -> None:
        """Back to the pool if the body was read to its end on a keep-alive connection; else closed."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self._pool.release(conn)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self._pool.discard(conn)


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
        self._framed = (
            "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        )
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


class Pool:
    """Keep-alive connections per origin, at most `limit` per origin at once (others queue)."""

    def __init__(
        self,
        *,
        limit: int,
        keepalive_timeout: float,
        connect_timeout: float,
        read_timeout: float,
        queue_timeout: float = 5.0,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._limit = limit
        self._queue_timeout = queue_timeout
        self._on_wait = on_wait  # observes how long each request waited for a connection
        self._keepalive = keepalive_timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[tuple[str, str, int], collections.deque[Connection]] = {}
        self._slots: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        # Connections taken per origin, kept beside the semaphore: Semaphore.locked() builds a generator on
        # every call (Python 3.11), and this is asked once a request.
        self._taken: dict[tuple[str, str, int], int] = {}
        self._busy: set[Connection] = set()
        self._closing = False

    async def _acquire(self, origin: Origin) -> tuple[Connection, bool]:
        idle = self._idle.get(origin.key)
        while idle:
            conn = idle.pop()  # the most recently used: least likely to be closed by the upstream
            # The connection's loop, not asyncio.get_running_loop(): on Python 3.11 that asks the kernel for
            # the pid (getpid(2)) on every call, twice a request here (counted with strace -c).
            if not conn.closed and conn.loop.time() - conn.idle_since < self._keepalive:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation (a client
            # that just left would still have its request sent upstream).
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self._read_timeout, origin.key),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl else None,
                )
        except (TimeoutError, OSError) as exc:
            raise UpstreamConnectError(
                f"cannot connect to {origin.host_header}: {type(exc).__name__}"
            ) from exc
        return conn, False

    def _free(self, key: tuple[str, str, int]) -> None:
        self._taken[key] -= 1
        self._slots[key].release()

    def release(self, conn: Connection) -> None:
        conn.in_exchange = False
        self._busy.discard(conn)
        key = conn.origin_key
        self._taken[key] -= 1  # _free(), inlined on the path every request takes
        self._slots[key].release()
        if self._closing or conn.closed or not conn.complete or not conn.keep_alive or not conn.body.at_eof:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.origin_key, collections.deque()).append(conn)

    def discard(self, conn: Connection) -> None:
        """Close a connection whose response will not be read to its end."""
        conn.close()
        self._busy.discard(conn)
        self._free(conn.origin_key)

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> Response:
        """Send one request; the Response must be released (or closed) by the caller."""
        key = origin.key
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self._limit)
            self._taken[key] = 0
        taken = self._taken[key]
        self._taken[key] = taken + 1  # counted from now: a waiting request is demand too
        if taken >= self._limit:
            # Only a request that must wait pays for a timer (asyncio.timeout arms one).
            started = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(self._queue_timeout):
                    await slots.acquire()
            except BaseException as exc:
                self._taken[key] -= 1
                if not isinstance(exc, TimeoutError):
                    raise
                if self._on_wait is not None:
                    self._on_wait(self._queue_timeout)  # saturation shows in the histogram too
                raise PoolBusy(
                    f"no connection to {origin.host_header} within {self._queue_timeout:g}s"
                ) from None
            waited = asyncio.get_running_loop().time() - started
        else:
            # Fewer taken or wanted than the limit: the semaphore has a free slot, so this does not wait
            # (or only for the loop turn in which a woken waiter takes its own).
            try:
                await slots.acquire()
            except BaseException:  # cancelled in that loop turn: the client left
                self._taken[key] -= 1
                raise
            waited = 0.0
        if self._on_wait is not None:
            self._on_wait(waited)
        try:
            return await self._exchange(origin, method, target, headers, body)
        except BaseException:
            self._free(key)
            raise

    async def _exchange(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> Response:
        streamed = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif streamed and "Content-Length" not in headers:
            headers["Transfer-Encoding"] = "chunked"
        head = encode_head([f"{method} {target} HTTP/1.1", f"Host: {origin.host_header}"], headers)
        # RFC 9110 §9.2.2: a request may be retried on a fresh connection only when repeating it is safe
        # and nothing of it could have been processed: a reused connection that closed before answering.
        retry_safe = method in IDEMPOTENT and not streamed
        for attempt in (1, 2):
            conn, reused = await self._acquire(origin)
            conn.begin(head_only=method == "HEAD")
            self._busy.add(conn)
            writer: asyncio.Task[None] | None = None
            try:
                if streamed:
                    conn.write(head)
                    writer = asyncio.ensure_future(_write_body(conn, body, "Transfer-Encoding" in headers))  # type: ignore[arg-type]
                    status, reason, response_headers = await _head_or_writer_failure(conn, writer)
                else:
                    conn.write(head + body if isinstance(body, bytes) else head)
                    status, reason, response_headers = await conn.head
            except BaseException as exc:
                self._busy.discard(conn)
                conn.close()
                if writer is not None:
                    writer.cancel()
                stale = isinstance(exc, UpstreamDisconnected) and reused and not conn.received
                if attempt == 1 and stale and retry_safe:
                    continue
                raise
            if writer is not None and not writer.done():
                conn.keep_alive = False  # answered before the body was sent: the connection cannot be reused
                writer.cancel()
            return Response(self, conn, status, reason, response_headers)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        self._closing = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()


async def _write_body(conn: Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    conn.sending = True
    try:
        async for chunk in body:
            if not chunk:
                continue
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
    finally:
        conn.sending = False


async def _head_or_writer_failure(
    conn: Connection, writer: asyncio.Task[None]
) -> tuple[int, str, CIMultiDict[str]]:
    """The response head; if the request body fails first (too large, client gone), that error."""
    waiting: set[asyncio.Future[Any]] = {conn.head, writer}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if writer in done:
        failure = writer.exception()
        if failure is not None:
            raise failure
    return await conn.head
