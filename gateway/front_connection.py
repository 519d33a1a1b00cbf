"""One client connection on the proxy port: HTTP/1.x parsed with httptools (llhttp), one request served at
a time in order (pipelined ones wait, parsed), with the edge's limits and timeouts.

The model is uvicorn's httptools_impl.py: the parser is fed every byte as it arrives and its callbacks
build the requests; a request is served by one task while reading continues under flow control. Unlike
uvicorn it buffers a body up to upstream.buffer_request_body before serving (so a slow uploader holds no bot
connection), refuses what it cannot frame with certainty, and keeps no timer per request: FrontEnd's
watcher compares each connection's `phase` and `since` with the listen.*_timeout every tick (frontend.py).

A WebSocket handshake is handed, head and all, to aiohttp's server, which owns that connection afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Final, cast

import httptools
from aiohttp import web
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.chunks import HIGH_WATER
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    ExpectationFailed,
    GatewayError,
    HeadersTooLarge,
    MethodNotAllowed,
    RequestTimeout,
    UpstreamBusy,
    UriTooLong,
    VersionNotSupported,
    error_whole,
    unexpected_error,
)
from gateway.front_request import Request
from gateway.front_response import StreamWriter, whole_bytes
from gateway.headers import content_length, encode_head, is_websocket_upgrade, redact_path
from gateway.messages import Outgoing, Whole

if TYPE_CHECKING:
    from gateway.frontend import FrontEnd

log = logging.getLogger("gateway")

MAX_REQUEST_LINE: Final = 8190  # bytes of request target; nginx's large_client_header_buffers is 8 KiB
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_SINGLETONS: Final = frozenset(name.lower() for name in SINGLETON_HEADERS)

# What the connection waits for, which decides the timeout that applies (FrontEnd._watch).
IDLE: Final = 0  # between requests: listen.keepalive_timeout, closed quietly
HEAD: Final = 1  # a request head: listen.header_timeout from its first byte, then 408
BODY: Final = 2  # a request body: listen.body_timeout of silence, then 408
BUSY: Final = 3  # the request is being served: the upstream's timeouts apply (and send_timeout)
LINGER: Final = 4  # the last response is out, the client's unread bytes are drained before closing

# Why reading is paused: several reasons may hold at once.
_PIPELINED: Final = 1  # a request waits behind the one being served
_BODY_FULL: Final = 2  # a streamed body's buffer is above its high-water mark
_STOPPED: Final = 4  # nothing more will be parsed (a refusal, an upgrade)


def _handshake_refusal(request: Request) -> GatewayError | None:
    """Why a WebSocket handshake is refused before any bot sees it (RFC 6455 §4.2.1), or None."""
    headers = request.headers
    if request.method != "GET":
        return BadRequest("A WebSocket handshake must be a GET.")
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        return BadRequest("A WebSocket handshake must ask for Sec-WebSocket-Version 13.")
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        valid = key.isascii() and len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error is one
        valid = False
    if not valid:
        return BadRequest("A WebSocket handshake needs a Sec-WebSocket-Key of 16 bytes in base64.")
    return None


class _Stop(Exception):
    """Raised in a parser callback to stop parsing; the reason is already recorded."""


class HttpConnection(asyncio.Protocol):
    def __init__(self, front: FrontEnd) -> None:
        self._front = front
        self.loop = front.loop
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[Request] = collections.deque()  # parsed, not yet served
        self._parsing: Request | None = None  # the request whose body is arriving
        self._task: asyncio.Task[None] | None = None
        self._in_head = False
        self._url = b""
        self._fields: list[tuple[str, str]] = []
        self._head_bytes = 0  # bytes read while a head was incomplete (what a parser buffers in the meantime)
        self._read = 0  # bytes of the read being parsed
        self._fresh = True  # no byte has arrived yet
        self._counted = False  # the request being served counts in front.inflight
        self._paused = 0
        self._stopped = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.closing = False  # the connection ends after the response being written
        self.closed = False
        # A new connection waits for its first head, so listen.header_timeout applies to it from the start
        # (nginx's client_header_timeout does the same); keepalive_timeout is for between requests.
        self.phase = HEAD
        self.since = front.now  # when the current phase began (or, for BODY, the last byte arrived)
        self.send_since = 0.0  # when writing last stalled; 0 while the client reads
        self.send_backlog = 0  # bytes then waiting in the transport

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        # Back-pressure from a slow client reaches the bot's connection past this many bytes (Envoy's 32 KiB).
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        front = self._front
        if front.open_connections() >= front.max_connections:
            front.rejected()
            self._stopped = True
            self.transport.write(whole_bytes(None, error_whole(front.too_many), close=True))
            self.transport.close()
            return
        front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # a refusal is being answered, or lingering: what follows is not read
        was_in_head = self._in_head
        phase = self.phase
        if phase == IDLE or self._fresh:  # the head's time counts from its first byte
            self.phase, self.since = HEAD, self._front.now
            self._fresh = False
        elif phase == BODY:
            self.since = self._front.now
        self._read = len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_error(exc, data)
        if self._in_head and was_in_head and not self._stopped:
            # Reads wholly inside a head: the read it began in may hold a body before it, never counted.
            self._head_bytes += self._read
            if self._head_bytes > self._front.max_head:
                self._refuse(HeadersTooLarge("The request head is larger than the gateway accepts."))
        self._advance()

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_error(exc, data)

    def _parse_error(self, exc: Exception, data: bytes) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._upgraded(data[cast(int, exc.args[0]) :])
        elif isinstance(exc, httptools.HttpParserCallbackError):
            if not self._stopped:  # a bug of ours in a callback, not a refusal
                log.error("failed to parse a request", exc_info=exc.__context__)
                self._refuse(GatewayError("The gateway failed to read the request."))
        elif str(exc) == "Invalid HTTP version":  # llhttp's words for HTTP/1.2, HTTP/3.0...
            self._refuse(VersionNotSupported("Only HTTP/1.0 and HTTP/1.1 are served."))
        else:
            self._refuse(BadRequest(f"The request is not valid HTTP/1.1 ({exc})."))

    def eof_received(self) -> bool | None:
        # As aiohttp: a client that closes its side has left, so its request (if any) is abandoned.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._front.connections.discard(self)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))
        if self._parsing is not None:
            self._parsing.content.fail(ConnectionResetError("the client closed the connection mid-body"))
        if self._task is not None:
            self._task.cancel()  # the upstream request is abandoned
            self._settle()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.send_since = self._front.now
        if self.transport is not None:
            self.send_backlog = self.transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.send_since = 0.0
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------------------

    # No on_message_begin: a callback fewer per request. on_url comes first in every request; the head's
    # state is reset in on_headers_complete, once used.

    def on_url(self, url: bytes) -> None:
        self._in_head = True
        self._url += url
        if len(self._url) > MAX_REQUEST_LINE:
            raise self._refusing(UriTooLong(f"The request target is longer than {MAX_REQUEST_LINE} bytes."))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # llhttp reports a chunked body's trailer fields here
            raise self._refusing(BadRequest("Trailer fields after a chunked body are not accepted."))
        # rstrip: llhttp keeps a value's trailing whitespace (RFC 9110 §5.5 excludes it from the value).
        self._fields.append(
            (name.decode("utf-8", "surrogateescape"), value.rstrip(b" \t").decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        self._in_head = False
        front = self._front
        # No field can be over a limit when all the reads that held the head are shorter than it (the usual
        # head comes in one read): the fields are measured one by one only otherwise.
        if self._head_bytes + self._read > front.small_head or len(self._fields) > front.max_headers:
            self._measure_head()
        self._head_bytes = 0
        parser = self._parser
        fields = CIMultiDict(self._fields)
        length = fields.get("Content-Length")
        declared = content_length(length) if length is not None else None  # llhttp judged the value
        chunked = "Transfer-Encoding" in fields  # llhttp refuses any coding but a final chunked
        request = Request(
            self,
            parser.get_method().decode("ascii", "surrogateescape"),
            self._url.decode("utf-8", "surrogateescape"),
            parser.get_http_version(),
            CIMultiDictProxy(fields),
            declared,
            chunked or bool(declared),
            not parser.should_keep_alive(),
        )
        self._url, self._fields = b"", []
        self._queue.append(request)
        self._parsing = request
        refusal = self._judge(request, fields)
        if refusal is not None:
            raise self._refusing(refusal)
        if self.phase == HEAD:
            self.phase, self.since = BODY, self._front.now

    def on_body(self, data: bytes) -> None:
        request = self._parsing
        assert request is not None
        request.content.feed(data)
        if request.content.received > self._front.max_body:
            raise self._refusing(
                BodyTooLarge(f"The request body exceeds the limit of {self._front.max_body} bytes.")
            )

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None:
            request.content.feed_eof()
        if self.phase == BODY:
            self.phase = BUSY  # a streamed body is complete: what remains is the bot's to answer

    # -- judging -------------------------------------------------------------------------------------------

    def _measure_head(self) -> None:
        front = self._front
        limit = front.max_field_size  # per name and per value, as aiohttp's server judged them
        size = len(self._url)
        for name, value in self._fields:
            if len(name) > limit or len(value) > limit:
                break
            size += len(name) + len(value) + 4
        else:
            if len(self._fields) <= front.max_headers and size <= front.max_head:
                return
        raise self._refusing(
            HeadersTooLarge(
                f"The request has a header name or value over {limit} bytes, over {front.max_headers} "
                f"headers, or a head over {front.max_head} bytes."
            )
        )

    def _judge(self, request: Request, fields: CIMultiDict[str]) -> GatewayError | None:
        """Why the request is refused, or None: what a browser never sends, or we cannot frame."""
        if request.version not in ("1.1", "1.0"):
            return VersionNotSupported("Only HTTP/1.0 and HTTP/1.1 are served.")
        method = request.method
        if method == "CONNECT":
            return MethodNotAllowed("CONNECT is not supported: the gateway is no forward proxy.")
        if method == "TRACE":
            return MethodNotAllowed("TRACE is not forwarded.")
        target = request.raw_path
        # A path, OPTIONS *, or the absolute form (whose path is used): any other target is refused here.
        if (
            target[:1] != "/"
            and not target.startswith(("http://", "https://"))
            and not (target == "*" and method == "OPTIONS")
        ):
            return BadRequest("The request target is neither a path nor an absolute URL.")
        if request.version == "1.1" and "Host" not in fields:
            return BadRequest("The request has no Host header.")  # RFC 9112 §3.2
        for name in fields.keys() & _SINGLETONS:
            if len(fields.getall(name)) > 1:
                return BadRequest(f"The request repeats the {name} header.")
        if self._parser.should_upgrade() and request.body_exists:
            # llhttp treats what follows an upgrade's head as the new protocol, never as its body.
            return BadRequest("An upgrade request must not carry a body.")
        expect = fields.get("Expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                return ExpectationFailed("Only the expectation 100-continue is supported.")
            request.expect_continue = request.body_exists
        if request.content_length is not None and request.content_length > self._front.max_body:
            return BodyTooLarge(
                f"The request body of {request.content_length} bytes exceeds the limit of "
                f"{self._front.max_body} bytes."
            )
        return None

    def _refusing(self, error: GatewayError) -> _Stop:
        self._refuse(error)
        return _Stop()

    def _refuse(self, error: GatewayError, request: Request | None = None) -> None:
        """Stop reading; answer `error` (for `request`, else the one being parsed) once the requests before
        it are answered, then close."""
        if self._stopped:
            return
        self._stopped = True
        self._pause(_STOPPED)
        log.info(
            "refused a request from %s: %s %s (%s)", self.remote, error.status, error.code, error.message
        )
        request = request or self._parsing
        if request is not None and request.content.streaming:
            request.content.fail(error)  # the request is being served: its reader gets the error
            return
        if request is None or request not in self._queue:
            request = Request(self, "", "", "1.1", CIMultiDictProxy(CIMultiDict()), None, False, True)
            self._queue.append(request)
        request.refusal = error

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped after an upgrade's head (or CONNECT's, refused already)."""
        if self._stopped:
            return
        request = self._queue[-1]
        if request.version == "1.1" and is_websocket_upgrade(request.headers):
            refusal = _handshake_refusal(request)
            if refusal is not None:  # refused here: aiohttp would, but only after the bot was asked
                self._refuse(refusal, request)
                return
            request.upgrade = rest  # aiohttp's server takes the connection when the request's turn comes
            self._stopped = True
            self._pause(_STOPPED)
            return
        # Another protocol (h2c...), or an HTTP/1.0 request, whose Upgrade is to be ignored (RFC 9110 §7.8):
        # served as a plain request, the Upgrade header dropped as hop-by-hop.
        self._parser = httptools.HttpRequestParser(self)
        if rest:
            self._feed(rest)

    # -- serving -------------------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Serve the next request once it may be served, answer a refusal, or go idle."""
        if self._task is not None:
            if self._queue:
                self._pause(_PIPELINED)
            return
        if not self._queue or self.closed:
            if self.phase == BUSY:
                self.phase, self.since = (HEAD if self._in_head else IDLE), self._front.now
            return
        request = self._queue[0]
        front = self._front
        body = request.content
        if body.complete and request.refusal is None and request.upgrade is None and not front.max_inflight:
            # The common case, kept to the fewest steps: a request read whole (a chat turn).
            self._queue.popleft()
            if request.body_exists:
                request.content_length = body.received  # sent upstream with its length, even if chunked
            self.phase = BUSY
            front.inflight += 1
            self._counted = True
            self._task = front.loop.create_task(self._serve(request))
            return
        if request.refusal is not None:
            self._queue.clear()
            self._start(request, self._answer(request, request.refusal))
            return
        if request.upgrade is not None:
            self._queue.popleft()
            front.hand_over(self, request)
            return
        if not body.complete:
            declared = request.content_length
            self._continue(request)
            if (declared is None or declared <= front.buffer_body) and body.received <= front.buffer_body:
                self.phase = BODY
                return  # read whole before it is served: a slow uploader holds no bot connection
            body.streaming = True
        elif request.body_exists:
            request.content_length = body.received
            self.phase = BUSY
        else:
            self.phase = BUSY
        self._queue.popleft()
        if front.max_inflight and front.inflight >= front.max_inflight:
            busy = UpstreamBusy("The gateway is serving as many requests as it may; retry shortly.")
            self._start(request, self._answer(request, busy))
            return
        self._start(request, self._serve(request))

    def _settle(self) -> None:
        """The request being served counts no more in front.inflight: once, whether its task ended or was
        cancelled before it ever ran (a coroutine that never started runs no `finally`)."""
        if self._counted:
            self._counted = False
            self._front.inflight -= 1

    def _continue(self, request: Request) -> None:
        if request.expect_continue and self.transport is not None and not self.transport.is_closing():
            request.expect_continue = False
            self.send(CONTINUE)

    def _start(self, request: Request, work: object) -> None:
        self._front.inflight += 1
        self._counted = True
        self._task = self._front.loop.create_task(work)  # type: ignore[arg-type]

    async def _answer(self, request: Request, error: GatewayError) -> None:
        """The front end's own answer: a refusal (then the connection ends) or load shed."""
        if request.refusal is not None:
            self.closing = True
        self._front.metrics.count_request(request.method or "other", error.status)
        try:
            await self._write_whole(request, error_whole(error))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._done(request)

    async def _serve(self, request: Request) -> None:
        front = self._front
        try:
            try:
                target = request.raw_path
                # Most targets are none of the gateway's pages (see LocalRoutes.starts)
                own = target.startswith(front.routes.starts) or "%" in target
                route = front.routes.match(request) if own else None
                page = None if route is None else await route(request)
                response: web.StreamResponse | Outgoing | Whole = (
                    page if page is not None else await front.proxy.handle(request, self._new_stream)
                )
            except GatewayError as exc:
                response = error_whole(exc)
            except Exception:
                response = unexpected_error(request.method, request.raw_path)
            if isinstance(response, Whole | web.Response):
                if front.cors.enabled:
                    await self.decorate(request, response)
                self.send(whole_bytes(request, response, self.last_response(request)))
                if self._writing_paused:
                    await self.drain()  # a client that pipelines and never reads must not grow our buffers
            elif isinstance(response, StreamWriter) and not response.prepared:
                self.closing = True  # a stream that never started (its client left): nothing more to say
        except asyncio.CancelledError:
            pass  # the client left; connection_lost has run
        except (ConnectionError, RuntimeError):
            self.closing = True
        except Exception:  # a bug of ours while writing: one line, and the client sees the connection end
            log.exception(
                "failed to write the response to %s %s", request.method, redact_path(request.raw_path)
            )
            self.closing = True
        finally:
            self._done(request)

    def _done(self, request: Request) -> None:
        self._task = None
        self._settle()
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return  # the client is gone (connection_lost may come a loop turn later): serve nothing more
        if self.last_response(request):
            self._close()  # its head said Connection: close
            return
        if self._paused & _PIPELINED:
            self._resume(_PIPELINED)
        self.phase, self.since = BUSY, self._front.now
        self._advance()

    async def _write_whole(self, request: Request, response: Whole | web.Response) -> None:
        await self.decorate(request, response)
        self.send(whole_bytes(request if request.method else None, response, self.last_response(request)))
        await self.drain()  # a client that pipelines and never reads must not grow our buffers

    def _new_stream(self, status: int, reason: str, headers: CIMultiDict[str]) -> Outgoing:
        return StreamWriter(self, status, reason, headers)

    async def decorate(self, request: Request, response: web.StreamResponse | StreamWriter | Whole) -> None:
        """CORS headers on every response, errors and streams included."""
        cors = self._front.cors
        if cors.enabled and request.method:
            await cors.on_response_prepare(request, response)

    def last_response(self, request: Request) -> bool:
        """Whether the response being written is this connection's last (it says Connection: close). At
        shutdown, requests already read are still answered: the last of them is the last response."""
        return (
            self.closing
            or (self._front.closing and not self._queue)
            or request.close
            or request.refusal is not None
            or not request.content.complete
        )

    # -- flow control and writing ----------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def pause_for_body(self) -> None:
        self._pause(_BODY_FULL)

    def resume_for_body(self) -> None:
        if self._paused & _BODY_FULL:
            self._resume(_BODY_FULL)
            self.since = self._front.now  # the wait was the bot's: the client's silence counts from now

    @property
    def body_paused(self) -> bool:
        """Whether reading waits for the bot to take the body: silence then is not the client's."""
        return bool(self._paused & _BODY_FULL)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        if self._writing_paused:
            self._drain_waiter = self._front.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def _close(self) -> None:
        """Close after the last response; bytes the client may still send are drained first (nginx's
        lingering close), so that closing with them unread does not reset the connection and the response."""
        self.closing = True
        transport = self.transport
        if transport is None or self.closed or self.phase == LINGER:
            return
        # The watcher ends it if the client neither reads what is left to send nor closes (check()).
        self.phase, self.since = LINGER, self._front.now
        unread = self._stopped or self._parsing is not None or self._in_head or self._queue
        if unread and transport.can_write_eof():
            transport.write_eof()
            self._stopped = True  # data_received drops what comes
            self._paused = 0
            transport.resume_reading()
            return
        transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- timeouts and shutdown ---------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """FrontEnd's watcher, every tick: end what has waited longer than its timeout allows."""
        front = self._front
        if self.send_since and now - self.send_since > front.send_timeout:
            transport = self.transport
            backlog = transport.get_write_buffer_size() if transport is not None else 0
            if backlog < self.send_backlog:  # the client read something since: it is slow, not gone
                self.send_since, self.send_backlog = now, backlog
            else:
                front.timed_out("send", self.remote)
                self.abort()  # its task is cancelled: the bot's connection is closed, not pooled
                return
        phase, waited = self.phase, now - self.since
        if phase == IDLE and waited > front.keepalive_timeout:
            front.timed_out("keepalive", None)
            self._close()
        elif phase == HEAD and waited > front.header_timeout:
            front.timed_out("header", self.remote)
            if self._fresh:
                self._close()  # connected and never said a word: nothing to answer (nginx closes too)
                return
            self._refuse(
                RequestTimeout(f"The request head did not arrive within {front.header_timeout:g} s.")
            )
            self._advance()
        elif phase == BODY and waited > front.body_timeout and not self.body_paused:
            front.timed_out("body", self.remote)
            self._refuse(RequestTimeout(f"The request body stalled for {front.body_timeout:g} s."))
            self._advance()
        elif phase == LINGER:
            transport = self.transport
            if transport is not None and transport.get_write_buffer_size():
                if waited > front.send_timeout:  # the last response is still unread: a client gone silent
                    front.timed_out("send", self.remote)
                    self.abort()
            elif waited > front.linger:
                self.abort()

    def close_when_idle(self) -> None:
        """Shutdown: close now if no request has started; else after the requests already read are answered
        (front.closing makes the last of them say Connection: close)."""
        if self._task is None and self.phase in (IDLE, HEAD) and not self._queue:
            self._close()

    async def finish(self, timeout: float | None) -> None:
        """Wait for the request being served (and those already read), then close."""
        if self._task is not None or self._queue:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(timeout):
                    while (self._task is not None or self._queue) and not self.closed:
                        task = self._task
                        if task is None:
                            await asyncio.sleep(self._front.tick)  # a body still arriving
                        else:
                            await asyncio.shield(task)
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def replay_head(self, request: Request) -> bytes:
        """The request's head as aiohttp's server is to read it (validated, and so re-encoded as it came)."""
        return encode_head([f"{request.method} {request.raw_path} HTTP/{request.version}"], request.headers)
