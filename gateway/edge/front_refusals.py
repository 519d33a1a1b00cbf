"""Why the front end refuses a request head before any bot sees it: what a browser never sends, what the
gateway cannot frame with certainty, and what is over the edge's limits. Each function returns the error to
answer, or None."""

from __future__ import annotations

import base64
from typing import Final

import httptools
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict

from gateway.edge.front_request import Request
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    ExpectationFailed,
    GatewayError,
    HeadersTooLarge,
    MethodNotAllowed,
    VersionNotSupported,
)

_SINGLETONS: Final = frozenset(name.lower() for name in SINGLETON_HEADERS)


def judge(
    request: Request, fields: CIMultiDict[str], parser: httptools.HttpRequestParser, max_body: int
) -> GatewayError | None:
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
    if parser.should_upgrade() and request.body_exists:
        # llhttp treats what follows an upgrade's head as the new protocol, never as its body.
        return BadRequest("An upgrade request must not carry a body.")
    expect = fields.get("Expect")
    if expect is not None:
        if expect.lower() != "100-continue":
            return ExpectationFailed("Only the expectation 100-continue is supported.")
        request.expect_continue = request.body_exists
    if request.content_length is not None and request.content_length > max_body:
        return BodyTooLarge(
            f"The request body of {request.content_length} bytes exceeds the limit of {max_body} bytes."
        )
    return None


def oversized_head(
    url: bytes, fields: list[tuple[str, str]], limit: int, max_headers: int, max_head: int
) -> GatewayError | None:
    """Whether a name or value is over `limit` bytes (as aiohttp's server judged them), the fields are over
    `max_headers`, or the head over `max_head` bytes: measured field by field."""
    size = len(url)
    for name, value in fields:
        if len(name) > limit or len(value) > limit:
            break
        size += len(name) + len(value) + 4
    else:
        if len(fields) <= max_headers and size <= max_head:
            return None
    return HeadersTooLarge(
        f"The request has a header name or value over {limit} bytes, over {max_headers} "
        f"headers, or a head over {max_head} bytes."
    )


def handshake_refusal(request: Request) -> GatewayError | None:
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
