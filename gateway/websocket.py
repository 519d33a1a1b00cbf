"""Proxy a WebSocket both ways: text, binary, ping/pong, and close with its code."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict
from yarl import URL

if TYPE_CHECKING:
    from gateway.proxy import Exchange, Proxy
    from gateway.sessions import Turn

CLOSED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


async def proxy_websocket(
    proxy: Proxy, request: web.Request, url: URL, turn: Turn, exchange: Exchange
) -> web.StreamResponse:
    """Open the upstream socket first, so a refused upstream is a 502 JSON and not a dead socket."""
    protocols = [
        p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",") if p.strip()
    ]
    limit = proxy.config.upstream.max_ws_message_size
    try:
        upstream = await proxy.client.ws_connect(
            url,
            headers=proxy.upstream_headers(request, turn, websocket=True),
            protocols=protocols,
            autoclose=False,
            autoping=False,
            max_msg_size=limit,
        )
    except aiohttp.WSServerHandshakeError as exc:
        exchange.upstream_status = exc.status
        return web.Response(status=exc.status, text=exc.message or "")
    except Exception as exc:
        assert turn.replica is not None
        raise proxy._request_failure(exc, exchange, turn.replica) from None
    exchange.upstream_status = 101
    session_headers: CIMultiDict[str] = CIMultiDict()
    await proxy.sessions.finish(turn, 101, session_headers)
    chosen = [upstream.protocol] if upstream.protocol else []
    client = web.WebSocketResponse(protocols=chosen, autoclose=False, autoping=False, max_msg_size=limit)
    client.headers.extend(session_headers)
    await client.prepare(request)
    proxy.metrics.streams_open.labels(kind="websocket").inc()
    proxy.streams.sockets.add(client)
    try:
        pumps = [
            asyncio.create_task(_pump(client, upstream, exchange, inbound=True)),
            asyncio.create_task(_pump(upstream, client, exchange, inbound=False)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        proxy.streams.sockets.discard(client)
        proxy.metrics.streams_open.labels(kind="websocket").dec()
        if not upstream.closed:
            await upstream.close(code=client.close_code or aiohttp.WSCloseCode.GOING_AWAY)
        if not client.closed:
            await client.close(code=upstream.close_code or aiohttp.WSCloseCode.GOING_AWAY)
    return client


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    exchange: Exchange,
    *,
    inbound: bool,
) -> None:
    """Copy frames from source to sink until one side closes; the close code crosses over."""
    while True:
        msg = await source.receive()
        if msg.type in CLOSED:
            if not sink.closed:
                code = msg.data if msg.type == WSMsgType.CLOSE and isinstance(msg.data, int) else None
                await sink.close(code=code or aiohttp.WSCloseCode.OK, message=(msg.extra or "").encode())
            return
        size = len(msg.data) if isinstance(msg.data, bytes | str) else 0
        if inbound:
            exchange.bytes_in += size
        else:
            exchange.bytes_out += size
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type == WSMsgType.PONG:
            await sink.pong(msg.data)
