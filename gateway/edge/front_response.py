"""How the front end writes a response: one status-line and head encoder, whole bodies in one write,
streams chunked (or close-delimited for HTTP/1.0 clients), HEAD without a body."""

from __future__ import annotations

import email.utils
import functools
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from multidict import CIMultiDict

from gateway.edge.messages import Whole
from gateway.upstream.headers import encode_head

if TYPE_CHECKING:
    from gateway.edge.front_connection import HttpConnection
    from gateway.edge.front_request import Request

NO_BODY_STATUS: Final = frozenset({204, 304})


@functools.lru_cache(maxsize=1)
def _date(second: int) -> str:
    """The Date header value, formatted once a second."""
    return email.utils.formatdate(second, usegmt=True)


@functools.lru_cache(maxsize=64)
def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def encode_response_head(status: int, reason: str, headers: CIMultiDict[str], close: bool) -> bytes:
    """The status line (always HTTP/1.1, RFC 9110 §6.2) and header block, blank line included."""
    tail = [] if "Date" in headers else [f"Date: {_date(int(time.time()))}"]
    if close:
        tail.append("Connection: close")
    return encode_head([f"HTTP/1.1 {status} {reason or _reason(status)}"], headers, *tail)


def whole_bytes(request: Request | None, response: Whole | web.Response, close: bool) -> bytes:
    """A whole response, head and body, as one write."""
    body = response.body
    assert body is None or isinstance(body, bytes), "the front end's whole responses are bytes"
    headers = response.headers
    status = response.status
    if status in NO_BODY_STATUS or status < 200:
        headers.popall("Content-Length", None)
        body = b""
    else:
        body = body or b""
        if request is not None and request.method == "HEAD":
            # RFC 9110 §9.3.2: the head says how long the body would be: the bot's length when it answered
            # the HEAD (what it kept is empty), else the length of the body the gateway leaves out.
            headers.setdefault("Content-Length", str(len(body)))
            body = b""
        else:
            headers["Content-Length"] = str(len(body))
    return encode_response_head(status, response.reason, headers, close) + body


class StreamWriter:
    """A streamed response written to the client's transport (proxy.Outgoing)."""

    def __init__(self, conn: HttpConnection, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.prepared = False
        self._chunked = False
        self._bodyless = False

    async def prepare(self, request: Any) -> None:
        conn = self._conn
        await conn.decorate(request, self)
        headers = self.headers
        close = conn.last_response(request)
        if request.method == "HEAD":
            self._bodyless = True  # the upstream's Content-Length stays: it describes the GET's body
        elif self.status in NO_BODY_STATUS or self.status < 200:
            headers.popall("Content-Length", None)
            self._bodyless = True
        elif "Content-Length" not in headers:
            if request.version == "1.1":
                self._chunked = True  # an unsized body (SSE, chunked or close-delimited upstream): chunk it
                headers["Transfer-Encoding"] = "chunked"
            else:
                close = True  # HTTP/1.0 knows no chunking: the body ends with the connection
                conn.closing = True
        self.prepared = True
        conn.send(encode_response_head(self.status, self.reason, headers, close))
        await conn.drain()

    async def write(self, data: bytes) -> None:
        if not data or self._bodyless:
            return
        self._conn.send(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        await self._conn.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            await self.write(data)
        if self._chunked:
            self._conn.send(b"0\r\n\r\n")
            await self._conn.drain()
