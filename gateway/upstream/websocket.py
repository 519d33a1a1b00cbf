"""Proxy a WebSocket both ways: text, binary, ping/pong, and close with its code."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.edge.streams import Streams
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import SessionManager, Turn
from gateway.upstream.exchange import Exchange
from gateway.upstream.failures import Failures
from gateway.upstream.headers import Network
from gateway.upstream.upstream_request import upstream_headers

CLOSED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class WebSockets:
    """The proxy's WebSocket upgrades, on aiohttp's client and server (one instance per app)."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        max_msg_size: int,
        drop: frozenset[str],
        trusted: tuple[Network, ...],
        sessions: SessionManager,
        metrics: Metrics,
        streams: Streams,
        failures: Failures,
    ) -> None:
        self._client = client
        self._max_msg_size = max_msg_size  # upstream.max_ws_message_size
        self._drop = drop  # request headers never forwarded, the handshake's own included
        self._trusted = trusted
        self._sessions = sessions
        self._metrics = metrics
        self._streams = streams
        self._failures = failures

    async def proxy(
        self, request: web.Request, url: URL, turn: Turn, exchange: Exchange
    ) -> web.StreamResponse:
        """Open the upstream socket first, so a refused upstream is a 502 JSON and not a dead socket."""
        protocols = [
            p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",") if p.strip()
        ]
        limit = self._max_msg_size
        try:
            upstream = await self._client.ws_connect(
                url,
                headers=upstream_headers(request, turn, self._drop, self._trusted),
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
            raise self._failures.request_failure(exc, exchange, turn.replica) from None
        exchange.upstream_status = 101
        session_headers: CIMultiDict[str] = CIMultiDict()
        await self._sessions.finish(turn, 101, session_headers)
        chosen = [upstream.protocol] if upstream.protocol else []
        client = web.WebSocketResponse(protocols=chosen, autoclose=False, autoping=False, max_msg_size=limit)
        client.headers.extend(session_headers)
        await client.prepare(request)
        self._metrics.streams_open.labels(kind="websocket").inc()
        self._streams.sockets.add(client)
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
            self._streams.sockets.discard(client)
            self._metrics.streams_open.labels(kind="websocket").dec()
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
