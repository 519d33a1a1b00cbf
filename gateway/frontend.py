"""The proxy port's HTTP/1.1 front end: ordinary requests are parsed with httptools and answered here,
anything else is handed, bytes and all, to aiohttp's server on the same connection.

Why: measured on the proxy's path (bench/, issue 6), aiohttp's server machinery (RequestHandler, web.Request,
routing, middleware, StreamResponse) cost more per request than everything the gateway itself does; an
aiohttp "hello" server answers ~14k requests/s on the bench machine, a protocol with httptools ~65k.

The fast lane takes an HTTP/1.1 request whose target is a path, with no body or a Content-Length body of at
most 64 KiB, no Expect, no Upgrade and no Transfer-Encoding, within the header limits, and not for the
JavaScript client's route. Everything else (WebSocket handshakes, HEAD, chunked or large uploads, HTTP/1.0,
malformed requests, the client script) goes to aiohttp, which keeps that connection from then on: the
handoff happens between requests, with the bytes not yet parsed replayed, so nothing is read twice or lost.
Both lanes run the same Proxy.handle, so sessions, metrics, CORS and logs do not depend on the lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import time
from http import HTTPStatus
from typing import Any, Final, cast
from urllib.parse import unquote_to_bytes

import httptools
from aiohttp import web
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import GatewayError, error_response, unexpected_error
from gateway.headers import encode_head, redact_path
from gateway.messages import Outgoing, Whole
from gateway.proxy import SMALL_BODY, Proxy

log = logging.getLogger("gateway")

BUFFER_LIMIT: Final = 256 * 1024  # bytes buffered ahead of the request being served before reading pauses
HEAD_LIMIT: Final = 64 * 1024  # a head not complete by then goes to aiohttp, which applies its own limits
MAX_REQUEST_LINE: Final = 8190  # aiohttp's max_line_size: a longer target is its to refuse
IDLE_TIMEOUT: Final = 3630.0  # seconds an idle keep-alive connection is kept: aiohttp's default
NO_BODY_STATUS: Final = frozenset({204, 304})
_FALLBACK_METHODS: Final = frozenset({"HEAD", "CONNECT"})
_REFUSED: Final = frozenset({"transfer-encoding", "expect", "upgrade"})  # framing aiohttp's lane judges
_JUDGED: Final = frozenset(SINGLETON_HEADERS) | _REFUSED


@functools.lru_cache(maxsize=1)
def _date(second: int) -> str:
    """The Date header value, formatted once a second."""
    return email.utils.formatdate(second, usegmt=True)


class _Body:
    """The request body, read whole before the request is served (at most SMALL_BODY bytes)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def readexactly(self, n: int) -> bytes:
        if n > len(self._data):
            raise asyncio.IncompleteReadError(self._data, n)
        data, self._data = self._data[:n], self._data[n:]
        return data

    async def iter_any(self) -> Any:  # an async generator: AsyncIterator[bytes]
        if self._data:
            data, self._data = self._data, b""
            yield data


_NO_BODY: Final = _Body(b"")  # shared: reading an empty body changes nothing


class FastRequest:
    """The request as Proxy reads it (see proxy.Incoming)."""

    __slots__ = (
        "body_exists",
        "content",
        "content_length",
        "headers",
        "method",
        "raw_path",
        "remote",
        "transport",
    )

    scheme: Final = "http"

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        content_length: int | None,
        remote: str | None,
        transport: asyncio.Transport,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.content_length = content_length
        self.body_exists = bool(body)
        self.content = _Body(body) if body else _NO_BODY
        self.remote = remote
        self.transport: asyncio.Transport | None = transport


def _head(status: int, reason: str, headers: CIMultiDict[str], close: bool) -> bytes:
    """The status line and header block, blank line included."""
    tail = [] if "Date" in headers else [f"Date: {_date(int(time.time()))}"]
    if close:
        tail.append("Connection: close")
    return encode_head([f"HTTP/1.1 {status} {reason or _reason(status)}"], headers, *tail)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class FastStream:
    """A streamed response written straight to the client's transport (see proxy.Outgoing)."""

    def __init__(self, conn: FastConnection, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.prepared = False
        self._chunked = False

    async def prepare(self, request: Any) -> None:
        conn = self._conn
        await conn.decorate(request, self)
        headers = self.headers
        if self.status in NO_BODY_STATUS or self.status < 200:
            headers.popall("Content-Length", None)
        elif "Content-Length" not in headers:
            self._chunked = True  # an unsized body (SSE, chunked or close-delimited upstream): chunk it
            headers["Transfer-Encoding"] = "chunked"
        self.prepared = True
        conn.send(_head(self.status, self.reason, headers, conn.last_response()))
        await conn.drain()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._conn.send(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        await self._conn.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            await self.write(data)
        if self._chunked:
            self._conn.send(b"0\r\n\r\n")
            await self._conn.drain()


class FastConnection(asyncio.Protocol):
    """One client connection in the fast lane; requests are served one at a time, in order."""

    def __init__(self, front: FrontEnd) -> None:
        self._front = front
        self._loop = front.loop
        self.transport: asyncio.Transport | None = None
        self._remote: str | None = None
        # Bytes not yet served: usually a whole request as received (bytes, no copy), a bytearray when
        # data accumulates across reads.
        self._buffer: bytes | bytearray = b""
        self._parser = httptools.HttpRequestParser(self)
        self._task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.closing = False  # the connection ends after the response being written
        self.closed = False
        self.idle_since = self._loop.time()
        self._begin()

    def _begin(self) -> None:
        self._method = ""
        self._declared: int | None = None  # the request's Content-Length
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._fields: CIMultiDict[str] | None = None  # set once the head is judged; the body may follow later
        self._head_done = False
        self._keep_alive = True

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        self._front.connections.add(self)

    def last_response(self) -> bool:
        """Whether the response being written is this connection's last (it says Connection: close)."""
        return self.closing or self._front.closing

    @property
    def busy(self) -> bool:
        return self._task is not None

    def data_received(self, data: bytes) -> None:
        if not self._buffer:
            self._buffer = data
        else:
            if isinstance(self._buffer, bytes):
                self._buffer = bytearray(self._buffer)
            self._buffer += data
        if self._task is None:
            self.idle_since = self._loop.time()  # a request arriving slowly is not idle
            self._advance()
        elif len(self._buffer) > BUFFER_LIMIT and not self._reading_paused and self.transport is not None:
            self._reading_paused = True  # a pipelining client is far ahead of us: let TCP push back
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # As aiohttp: a client that closes its side has left, so its request (if any) is abandoned.
        # Browsers never half-close to wait for an answer; a bot generating tokens for nobody should stop.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._front.connections.discard(self)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("the client closed the connection"))
        if self._task is not None:
            self._task.cancel()  # as aiohttp's handler_cancellation: the upstream request is abandoned

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Field sizes are checked in _fast, only for a head longer than the limit. rstrip: httptools keeps a
        # value's trailing whitespace, aiohttp strips it.
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.rstrip(b" \t").decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._keep_alive = self._parser.should_keep_alive()  # only meaningful before the message completes

    # -- the request loop ----------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Serve the next complete request in the buffer, or hand the connection to aiohttp."""
        if self.closing or self.closed:
            return
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > HEAD_LIMIT or b"\n\n" in buffer:
                self._handoff()  # huge or bare-LF heads: aiohttp's parser decides
            return
        head_end = end + 4
        if not self._head_done:
            try:
                self._parser.feed_data(buffer if head_end == len(buffer) else bytes(buffer[:head_end]))
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self._handoff()  # upgrades, and malformed requests (aiohttp answers those with its 400)
                return
            fields = self._fast(head_end) if self._head_done else None
            if fields is None:
                self._handoff()
                return
            self._fields = fields
        length = self._declared or 0
        if len(buffer) < head_end + length:
            return  # the rest of the body is on its way
        end = head_end + length
        fields = self._fields
        assert fields is not None  # the head was judged above, in this call or an earlier one
        body = bytes(buffer[head_end:end]) if length else b""
        self._buffer = buffer[end:] if end < len(buffer) else b""
        if length:
            self._parser.feed_data(body)  # the parser completes the message and is ready for the next
        request = FastRequest(
            self._method,
            self._url.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(fields),
            body,
            self._declared,
            self._remote,
            cast(asyncio.Transport, self.transport),
        )
        keep_alive = self._keep_alive
        self._begin()
        if not keep_alive:
            self.closing = True
        self._task = self._loop.create_task(self._serve(request))

    def _fast(self, head_length: int) -> CIMultiDict[str] | None:
        """The request's fields if the fast lane takes it (and its method and body length set), else None."""
        parser = self._parser
        if parser.should_upgrade() or parser.get_http_version() != "1.1":
            return None
        method = parser.get_method().decode("ascii", "replace")
        url = self._url
        if method in _FALLBACK_METHODS or not url.startswith(b"/") or len(url) > MAX_REQUEST_LINE:
            return None
        front = self._front
        if len(self._headers) > front.max_headers:
            return None
        limit = front.max_field_size
        if head_length > limit and any(len(n) > limit or len(v) > limit for n, v in self._headers):
            return None
        fields = CIMultiDict(self._headers)
        # The names to judge, found by multidict's case-insensitive intersection (C) rather than by a Python
        # loop over every field (measured: 3x fewer bytecodes for a browser's 15 fields).
        for name in fields.keys() & _JUDGED:
            lower = name.lower()
            if lower in _REFUSED:
                return None
            if len(fields.getall(name)) > 1:  # a repeated singleton: aiohttp refuses it with 400
                return None
        if "Host" not in fields:
            return None  # RFC 9112 §3.2: 400 for a request without Host, as aiohttp answers
        declared: int | None = None
        length = fields.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                return None
            declared = int(length)
        if declared is not None and (declared > SMALL_BODY or declared > front.max_body):
            return None  # streamed, or refused early with 413 by aiohttp's lane
        if front.routed(url):
            return None
        self._method = method
        self._declared = declared
        return fields

    def _handoff(self) -> None:
        """Give this connection, and every byte not yet parsed, to aiohttp's server."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self._front.connections.discard(self)
        handler = self._front.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), b""
        if data:
            handler.data_received(data)

    async def _serve(self, request: FastRequest) -> None:
        try:
            try:
                response = await self._front.proxy.handle(request, self._new_stream)
            except GatewayError as exc:
                response = error_response(exc.status, exc.code, exc.message)
            except Exception:
                response = unexpected_error(request.method, request.raw_path)
            if isinstance(response, Whole | web.Response):
                await self.decorate(request, response)
                self._send_whole(response)
                await self.drain()  # a client that pipelines and never reads must not grow our buffers
            elif isinstance(response, FastStream) and not response.prepared:
                self.closing = True  # a stream that never started (its client left): nothing more to say
        except asyncio.CancelledError:
            return  # the client left; connection_lost has run
        except (ConnectionError, RuntimeError):
            self.closing = True
        except Exception:  # a bug of ours while writing: one line, and the client sees the connection end
            log.exception(
                "failed to write the response to %s %s", request.method, redact_path(request.raw_path)
            )
            self.closing = True
        finally:
            self._task = None
        self.idle_since = self._loop.time()
        if self.last_response():
            self._close()
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._buffer:
            self._advance()

    def _new_stream(self, status: int, reason: str, headers: CIMultiDict[str]) -> Outgoing:
        return FastStream(self, status, reason, headers)

    async def decorate(self, request: FastRequest, response: web.StreamResponse | FastStream | Whole) -> None:
        """What aiohttp's on_response_prepare hooks did: CORS headers on every response."""
        cors = self._front.proxy.cors
        if cors.enabled:
            await cors.on_response_prepare(request, response)

    def _send_whole(self, response: Whole | web.Response) -> None:
        body = response.body
        assert body is None or isinstance(body, bytes), "the proxy's whole responses are bytes"
        headers = response.headers  # the response is the proxy's own, made for this request
        status = response.status
        if status in NO_BODY_STATUS or status < 200:
            headers.popall("Content-Length", None)
            body = b""
        else:
            body = body or b""
            headers["Content-Length"] = str(len(body))
        self.send(_head(status, response.reason, headers, self.last_response()) + body)

    # -- writing ---------------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        if self._writing_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.closed:
            self.transport.close()

    # -- shutdown ---------------------------------------------------------------------------------------

    def close_when_idle(self) -> None:
        """Stop taking requests: close now if idle, else after the response being written."""
        self.closing = True
        if self._task is None:
            self._close()

    async def finish(self, timeout: float | None) -> None:
        task = self._task
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
        if self._task is not None:
            self._task.cancel()
        self._close()


class FrontEnd:
    """The protocol factory the proxy's sites listen with: fast connections, aiohttp as the fallback."""

    def __init__(self, fallback: web.Server, app: web.Application) -> None:
        from gateway.app import CONFIG, PROXY  # app.py's keys; a module-level import would be circular

        config = app[CONFIG]
        self.fallback = fallback
        self.proxy: Proxy = app[PROXY]
        self.loop = asyncio.get_running_loop()
        self.connections: set[FastConnection] = set()
        self.closing = False
        self.max_field_size = config.listen.max_field_size
        self.max_headers = config.listen.max_headers
        self.max_body = config.upstream.max_body_size
        self._exact, self._prefixes = _own_routes(app)
        self._reaper = self.loop.create_task(self._reap_idle())

    def __call__(self) -> FastConnection:
        return FastConnection(self)

    def routed(self, target: bytes) -> bool:
        """Whether the target is one of the app's own routes (the JS client, the demo widget)."""
        path = target.split(b"?", 1)[0].split(b"#", 1)[0]
        if b"%" in path:
            path = unquote_to_bytes(path)  # aiohttp's router matches the decoded path
        return path in self._exact or path.startswith(self._prefixes)  # a tuple: every prefix, in C

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(60)
            now = self.loop.time()
            for conn in list(self.connections):
                if not conn.busy and now - conn.idle_since > IDLE_TIMEOUT:
                    conn.close_when_idle()

    def pre_shutdown(self) -> None:
        self.closing = True
        self.fallback.pre_shutdown()
        for conn in list(self.connections):
            conn.close_when_idle()

    async def shutdown(self, timeout: float | None = None) -> None:
        self._reaper.cancel()
        await asyncio.gather(
            self.fallback.shutdown(timeout), *(conn.finish(timeout) for conn in list(self.connections))
        )
        self.connections.clear()


def _own_routes(app: web.Application) -> tuple[frozenset[bytes], tuple[bytes, ...]]:
    """Exact paths and path prefixes of every route but the proxy's catch-all: aiohttp serves those."""
    exact: set[bytes] = set()
    prefixes: list[bytes] = []
    for resource in app.router.resources():
        info = resource.get_info()
        if "path" in info:
            exact.add(str(info["path"]).encode())
            continue
        prefix = str(info.get("formatter") or info.get("prefix") or "/").split("{", 1)[0]
        if prefix != "/":  # "/{tail}" is the catch-all that proxies
            prefixes.append(prefix.encode())
    return frozenset(exact), tuple(prefixes)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose sites listen with the FrontEnd; aiohttp's server serves what it hands over."""

    async def _make_server(self) -> web.Server:
        fallback = await super()._make_server()
        # FrontEnd is no aiohttp Server but offers what runners and sites call on one: __call__,
        # pre_shutdown and shutdown.
        return cast(web.Server, FrontEnd(fallback, self.app))
