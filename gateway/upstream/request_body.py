"""Reading a client's request body for the bot: whole when it is small (sent with the head in one write) or
when session placement or carriage must read it first, else streamed as it arrives; each within its limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from gateway.edge.messages import Incoming
from gateway.errors import BadRequestBody, BodyTooLarge
from gateway.sessions.placing import Placer
from gateway.upstream.exchange import Exchange

# How reading a client's body fails when the client goes away mid-body.
_CLIENT_GONE = (ConnectionError, asyncio.IncompleteReadError, aiohttp.ClientConnectionResetError)


async def body_for_upstream(
    request: Incoming, exchange: Exchange, buffer: int, max_body: int
) -> bytes | AsyncIterator[bytes] | None:
    """A body the front end read whole (up to `buffer` bytes) is sent with the head in one write; a larger
    one streams, counted against `max_body`."""
    if not request.body_exists:
        return None
    length = request.content_length
    if length is not None and length <= buffer:
        try:
            body: bytes = await request.content.readexactly(length)
        except _CLIENT_GONE:
            exchange.client_gone = True
            raise asyncio.CancelledError() from None
        exchange.bytes_in = length
        return body
    return _streamed(request, exchange, max_body)


async def whole_body(request: Incoming, exchange: Exchange, buffer: int, placer: Placer) -> bytes:
    """The body read whole, up to upstream.buffer_request_body (`buffer`), for session placement or carriage;
    a larger one is a bad_request_body."""
    length = request.content_length
    too_large = BadRequestBody(
        f"The request body is over upstream.buffer_request_body ({buffer} bytes), so no session id "
        f"can be placed or read at {placer.pointers()}."
    )
    if length is not None and length > buffer:
        raise too_large
    chunks: list[bytes] = []
    try:
        if length is not None:
            chunks.append(await request.content.readexactly(length))
        else:
            async for chunk in request.content.iter_any():
                chunks.append(chunk)
                exchange.bytes_in += len(chunk)
                if exchange.bytes_in > buffer:
                    raise too_large
    except _CLIENT_GONE:
        exchange.client_gone = True
        raise asyncio.CancelledError() from None
    body = b"".join(chunks)
    exchange.bytes_in = len(body)
    return body


async def _streamed(request: Incoming, exchange: Exchange, max_body: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, counted against upstream.max_body_size (`max_body`)."""
    try:
        async for chunk in request.content.iter_any():
            exchange.bytes_in += len(chunk)
            if exchange.bytes_in > max_body:
                exchange.body_too_large = True
                raise BodyTooLarge(f"The request body exceeds the limit of {max_body} bytes.")
            yield chunk
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        exchange.client_gone = True
        raise
