"""A pooled HTTP/1.1 upstream client on asyncio protocols, parsing with httptools (llhttp).

Why not aiohttp's client: measured on the proxy's path, aiohttp's ClientSession machinery was most of the
plain proxy's per-request cost (about 165 of 217 µs, issue 6 and bench/). This client does only what a
reverse proxy needs: keep-alive pooling, a streamed or one-write request, a streamed response with
back-pressure, a connect timeout, a bounded wait for a connection, an inactivity (read) timeout, and one
retry of a request that met a stale pooled connection when that is safe. It is the proxy's one HTTP client,
HEAD included; WebSocket upgrades stay on aiohttp's client. One connection: upstream_connection.py.

A pooled connection is trusted only while it is quiet: any byte or EOF from the bot between exchanges,
or bytes after a complete response, closes it, so nothing a bot leaves behind reaches the next user.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.headers import content_length, encode_head
from gateway.upstream.upstream_connection import Connection, UpstreamDisconnected

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamConnectError(ConnectionError):
    """The TCP (or TLS) connection to the upstream could not be opened in time."""


class PoolBusy(Exception):
    """No connection to the origin became free within the queue timeout."""


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
