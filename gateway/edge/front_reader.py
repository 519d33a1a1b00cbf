"""The reading half of a client connection on the proxy port: every byte is fed to httptools (llhttp) as it
arrives, and its callbacks build the requests, parsed in order into a queue that HttpConnection
(front_connection.py) serves. A head or body the gateway cannot frame with certainty, or over the edge's
limits, is refused here (front_refusals.py says why), before any bot sees it.

Reading is paused for several reasons at once (a request waiting behind the one being served, a streamed
body's buffer above its high-water mark, a refusal or an upgrade); `phase` and `since` say what the connection
waits for, which decides the timeout FrontEnd's watcher applies.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Final, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.edge.front_refusals import handshake_refusal, judge, oversized_head
from gateway.edge.front_request import Request
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    GatewayError,
    HeadersTooLarge,
    TooManyPipelined,
    UriTooLong,
    VersionNotSupported,
)
from gateway.upstream.headers import content_length, is_websocket_upgrade

if TYPE_CHECKING:
    from gateway.edge.frontend import FrontEnd

log = logging.getLogger("gateway")

MAX_REQUEST_LINE: Final = 8190  # bytes of request target; nginx's large_client_header_buffers is 8 KiB
# Requests parsed ahead of the one being served. A parsed request costs ~600 bytes where its bytes may be 26,
# and one read (up to 256 KiB) is parsed whole: unbounded, pipelining made a connection hold 2-6 MB. nginx
# bounds it by its header buffers (4 x 8 KiB); 32 parsed requests are ~20 KB. Browsers do not pipeline.
MAX_AHEAD: Final = 32

# What the connection waits for, which decides the timeout that applies (FrontEnd._watch).
IDLE: Final = 0  # between requests: listen.keepalive_timeout, closed quietly
HEAD: Final = 1  # a request head: listen.header_timeout from its first byte, then 408
BODY: Final = 2  # a request body: listen.body_timeout of silence, then 408
BUSY: Final = 3  # the request is being served: the upstream's timeouts apply (and send_timeout)
LINGER: Final = 4  # the last response is out, the client's unread bytes are drained before closing

# Why reading is paused: several reasons may hold at once.
PIPELINED: Final = 1  # a request waits behind the one being served
BODY_FULL: Final = 2  # a streamed body's buffer is above its high-water mark
STOPPED: Final = 4  # nothing more will be parsed (a refusal, an upgrade)


class _Stop(Exception):
    """Raised in a parser callback to stop parsing; the reason is already recorded."""


class RequestReader(asyncio.Protocol):
    """Parses a client connection's requests into `_queue`; HttpConnection serves them (`_advance`).

    Every instance is an HttpConnection, which is what front_request.Request is typed to take; all it uses of
    the connection (loop, remote, transport, pause_for_body, resume_for_body) is defined here."""

    def __init__(self, front: FrontEnd) -> None:
        self._front = front
        self.loop = front.loop
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.closed = False
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[Request] = collections.deque()  # parsed, not yet served
        self._parsing: Request | None = None  # the request whose body is arriving
        self._in_head = False
        self._url = b""
        self._fields: list[tuple[str, str]] = []
        self._head_bytes = 0  # bytes read while a head was incomplete (what a parser buffers in the meantime)
        self._read = 0  # bytes of the read being parsed
        self._fresh = True  # no byte has arrived yet
        self._paused = 0
        self._stopped = False
        # A new connection waits for its first head, so listen.header_timeout applies to it from the start
        # (nginx's client_header_timeout does the same); keepalive_timeout is for between requests.
        self.phase = HEAD
        self.since = front.now  # when the current phase began (or, for BODY, the last byte arrived)

    def _advance(self) -> None:
        """Serve the next request once it may be served (HttpConnection)."""
        raise NotImplementedError

    # -- asyncio.Protocol ------------------------------------------------------------------------------

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
            oversized = oversized_head(
                self._url, self._fields, front.max_field_size, front.max_headers, front.max_head
            )
            if oversized is not None:
                raise self._refusing(oversized)
        self._head_bytes = 0
        parser = self._parser
        fields = CIMultiDict(self._fields)
        length = fields.get("Content-Length")
        declared = content_length(length) if length is not None else None  # llhttp judged the value
        chunked = "Transfer-Encoding" in fields  # llhttp refuses any coding but a final chunked
        request = Request(
            self,  # type: ignore[arg-type]  # an HttpConnection (see the class docstring)
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
        # Answered in its turn, after the requests before it; then the connection ends.
        if len(self._queue) > MAX_AHEAD:
            raise self._refusing(
                TooManyPipelined(f"More than {MAX_AHEAD} requests were sent ahead of their answers.")
            )
        refusal = judge(request, fields, parser, front.max_body)
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

    # -- refusing and upgrading ---------------------------------------------------------------------

    def _refusing(self, error: GatewayError) -> _Stop:
        self._refuse(error)
        return _Stop()

    def _refuse(self, error: GatewayError, request: Request | None = None) -> None:
        """Stop reading; answer `error` (for `request`, else the one being parsed) once the requests before
        it are answered, then close."""
        if self._stopped:
            return
        self._stopped = True
        self._pause(STOPPED)
        log.info(
            "refused a request from %s: %s %s (%s)", self.remote, error.status, error.code, error.message
        )
        request = request or self._parsing
        if request is not None and request.content.streaming:
            request.content.fail(error)  # the request is being served: its reader gets the error
            return
        if request is None or request not in self._queue:
            empty: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
            request = Request(self, "", "", "1.1", empty, None, False, True)  # type: ignore[arg-type]
            self._queue.append(request)
        request.refusal = error

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped after an upgrade's head (or CONNECT's, refused already)."""
        if self._stopped:
            return
        request = self._queue[-1]
        if request.version == "1.1" and is_websocket_upgrade(request.headers):
            refusal = handshake_refusal(request)
            if refusal is not None:  # refused here: aiohttp would, but only after the bot was asked
                self._refuse(refusal, request)
                return
            request.upgrade = rest  # aiohttp's server takes the connection when the request's turn comes
            self._stopped = True
            self._pause(STOPPED)
            return
        # Another protocol (h2c...), or an HTTP/1.0 request, whose Upgrade is to be ignored (RFC 9110 §7.8):
        # served as a plain request, the Upgrade header dropped as hop-by-hop.
        self._parser = httptools.HttpRequestParser(self)
        if rest:
            self._feed(rest)

    # -- flow control ------------------------------------------------------------------------------------

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
        self._pause(BODY_FULL)

    def resume_for_body(self) -> None:
        if self._paused & BODY_FULL:
            self._resume(BODY_FULL)
            self.since = self._front.now  # the wait was the bot's: the client's silence counts from now

    @property
    def body_paused(self) -> bool:
        """Whether reading waits for the bot to take the body: silence then is not the client's."""
        return bool(self._paused & BODY_FULL)
