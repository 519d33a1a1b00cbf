"""Forward one request upstream and stream the answer back, byte for byte."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Config
from gateway.edge.cors import Cors
from gateway.edge.messages import Incoming, NewStream, Outgoing, Whole
from gateway.edge.streams import Streams
from gateway.errors import BodyTooLarge, ReplicaUnavailable
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import LOGOUT, SessionManager, Turn
from gateway.sessions.placing import NOTHING, Checked, Placer
from gateway.upstream.deferral import DIALOGFLOW_MAX_BODY, Deferrals
from gateway.upstream.deferring import Deferring
from gateway.upstream.exchange import Exchange, log_exchange
from gateway.upstream.failures import BODY_FAILURES, Failures
from gateway.upstream.headers import (
    REQUEST_ONLY_DROP,
    WEBSOCKET_HANDSHAKE,
    is_websocket_upgrade,
    strip_hop_by_hop,
)
from gateway.upstream.request_body import body_for_upstream, whole_body
from gateway.upstream.reverse import REVERSED, reverse
from gateway.upstream.upstream_client import Pool, Response, UpstreamConnectError
from gateway.upstream.upstream_request import request_target, upstream_headers
from gateway.upstream.websocket import WebSockets

SSE_TYPE = "text/event-stream"
LOGOUT_BODY = json.dumps(LOGOUT).encode()
# Bytes: a known-length response body up to this is read whole, then sent with its head.
SMALL_BODY = 64 * 1024
_COOKIE = frozenset({hdrs.COOKIE})  # rebuilt by the session layer: merged, session set, gateway's own removed


def aiohttp_stream(status: int, reason: str, headers: CIMultiDict[str]) -> Outgoing:
    return web.StreamResponse(status=status, reason=reason, headers=headers)


class Proxy:
    """The request handler: one instance per app, holding the pooled client and metrics."""

    def __init__(
        self,
        config: Config,
        client: aiohttp.ClientSession,
        pool: Pool,
        metrics: Metrics,
        streams: Streams,
        sessions: SessionManager,
        cors: Cors,
        deferrals: Deferrals,
    ) -> None:
        self.upstreams = sessions.upstreams
        self.config = config
        self.client = client  # aiohttp's: WebSocket upgrades
        self.pool = pool  # ours: everything else (see upstream_client.py for why)
        self._buffer = config.upstream.buffer_request_body
        self.metrics = metrics
        self.streams = streams
        self.sessions = sessions
        self.cors = cors
        self._trusted = config.listen.trusted_networks()
        self._max_body = config.upstream.max_body_size
        self._drop = REQUEST_ONLY_DROP | sessions.owned_request_headers | _COOKIE
        self._path_param = config.session.path_param.lower()
        self._placer = Placer(config.session)
        self._deferrals = deferrals
        self._max_response = config.upstream.max_response_size  # 0: no cap
        self._access = config.log.access
        self._failures = Failures(config.upstream, metrics, self.upstreams)
        self._deferring = Deferring(deferrals, sessions, metrics, self._buffer, self._respond)
        self._websockets = WebSockets(
            client,
            config.upstream.max_ws_message_size,
            self._drop | WEBSOCKET_HANDSHAKE,
            self._trusted,
            sessions,
            metrics,
            streams,
            self._failures,
        )

    async def handle(
        self, request: Incoming, new_stream: NewStream = aiohttp_stream
    ) -> web.StreamResponse | Outgoing | Whole:
        """Proxy one request; gateway errors raise and are rendered by the error middleware (or the front end)."""
        exchange = Exchange(new_stream)
        self.metrics.in_flight.inc()
        status = 500
        try:
            response = await self._proxy(request, exchange)
            status = response.status
            return response
        except asyncio.CancelledError:
            # handler_cancellation: the client went away while we waited on the upstream.
            exchange.client_gone = True
            status = 499
            raise
        except web.HTTPException as exc:
            status = exc.status
            raise
        except Exception as exc:
            status = getattr(exc, "status", 500)
            raise
        finally:
            self.metrics.in_flight.dec()
            if exchange.client_gone:
                self.metrics.client_disconnects.inc()
            elapsed = time.perf_counter() - exchange.started
            self.metrics.count_request(request.method, status)
            self.metrics.request_duration.observe(elapsed)
            log_exchange(request, status, elapsed, exchange, self._access)

    async def _proxy(self, request: Incoming, exchange: Exchange) -> web.StreamResponse | Outgoing | Whole:
        preflight = self.cors.preflight(request)
        if preflight is not None:
            return preflight
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            raise BodyTooLarge(
                f"The request body of {declared} bytes exceeds the limit of {self._max_body} bytes."
            )
        target = request_target(request)
        checked = NOTHING
        deferrals = self._deferrals
        webhook = (
            deferrals.dialogflow
            and request.body_exists
            and 0 < (request.content_length or 0) <= min(DIALOGFLOW_MAX_BODY, self._buffer)
        )
        if self._placer.reads_body or (webhook and deferrals.enabled):
            body = (
                await whole_body(request, exchange, self._buffer, self._placer)
                if request.body_exists
                else None
            )
            checked = (
                self._placer.check(target, body) if self._placer.reads_body else Checked(body, None, None)
            )
            token = deferrals.dialogflow_token(body) if webhook and body else None
            if token is not None:  # the agent's follow-up call for a deferred answer: never forwarded
                answer = await deferrals.take(token, request, deferrals.after)
                if answer is not None:
                    return answer
        elif self._placer.places:
            checked = self._placer.check(target, None)
        turn = await self.sessions.prepare(target, request.headers, checked.body_id)
        exchange.session = turn.session_id
        if turn.answer_logout:
            return _logout(CIMultiDict())
        replica = turn.replica
        assert replica is not None
        replica.in_flight += 1
        handed_over = False  # a deferred exchange goes on in the background, which settles the counts
        try:
            try:
                # (isinstance second: web.Request is an ABC's subclass, and ABC checks are slow)
                if is_websocket_upgrade(request.headers) and isinstance(request, web.Request):
                    # The front end hands valid HTTP/1.1 handshakes to aiohttp's server; any other request
                    # with an Upgrade is a plain one (the header is hop-by-hop).
                    return await self._websockets.proxy(request, self._url(turn), turn, exchange)
                sent = time.perf_counter()
                if deferrals.enabled and self._deferring.deferrable(request, checked):
                    send = self._send(request, turn, exchange, checked)
                    upstream_or_interim = await self._deferring.send_or_defer(
                        request, turn, exchange, send, sent
                    )
                    if isinstance(upstream_or_interim, Whole):
                        handed_over = True
                        return upstream_or_interim
                    upstream = upstream_or_interim
                else:
                    upstream = await self._send(request, turn, exchange, checked)
            except BaseException:
                await asyncio.shield(self.sessions.abandon(turn))
                raise
            # (inline, not Deferring._respond_to(): one coroutine less on every request)
            received = time.perf_counter()
            exchange.upstream_status = upstream.status
            self.metrics.upstream_ttfb.observe(received - sent)
            try:
                return await self._respond(
                    request, upstream, exchange, turn, overhead=sent - exchange.started, received=received
                )
            finally:
                upstream.release()
        finally:
            if not handed_over:
                assert turn.replica is not None
                turn.replica.in_flight -= 1  # not `replica`: a re-pin in _send moved the count to the new one

    def _url(self, turn: Turn) -> URL:
        assert turn.replica is not None
        return URL(
            turn.replica.base + self._placer.target(turn.carried.target, turn.session_id), encoded=True
        )

    async def _send(self, request: Incoming, turn: Turn, exchange: Exchange, checked: Checked) -> Response:
        """Send upstream; a replica that refuses the connection is marked down, and a live session whose
        replica is gone moves once to another (nothing was sent yet, so the retry is safe)."""
        while True:
            replica = turn.replica
            assert replica is not None
            replica.requests_metric.inc()
            headers = upstream_headers(request, turn, self._drop, self._trusted)
            target = turn.carried.target
            try:
                if checked.body is None:
                    body = await body_for_upstream(request, exchange, self._buffer, self._max_body)
                else:  # read whole for session placement or carriage; placed again after a re-pin
                    body = self._placer.body(checked, turn.session_id)
                if self._placer.places:
                    target = self._placer.target(target, turn.session_id)
                upstream = await self.pool.request(
                    replica.origin, request.method, replica.prefix + target, headers, body
                )
            except Exception as exc:
                error = self._failures.request_failure(exc, exchange, replica)
                refused = isinstance(
                    exc, UpstreamConnectError | aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
                )
                if refused and exchange.bytes_in == 0 and self.sessions.can_repin(turn):
                    await self.sessions.repin(turn)
                    replica.in_flight -= 1
                    assert turn.replica is not None
                    turn.replica.in_flight += 1
                    continue
                strict = self.sessions.strict_affinity and len(self.upstreams.replicas) > 1
                if refused and turn.live and strict:  # the session stays with its replica: retry later
                    raise ReplicaUnavailable("The bot replica holding this session is unavailable.") from None
                raise error from None
            self.upstreams.mark_up(replica)
            return upstream

    async def _respond(
        self,
        request: Incoming,
        upstream: Response,
        exchange: Exchange,
        turn: Turn,
        *,
        overhead: float,
        received: float,
        keep: int = 0,
    ) -> web.StreamResponse | Outgoing | Whole:
        """The bot's answer to the client: whole when small, else streamed; `keep`: whole up to that many bytes
        (a deferred answer). Over upstream.max_response_size it is a 502 before anything reaches the client."""
        if turn.ended and upstream.status in (404, 405):
            # A bot without an end-session endpoint: answer the Teneo logout ourselves.
            logout_headers: CIMultiDict[str] = CIMultiDict()
            await self.sessions.finish(turn, upstream.status, logout_headers)
            return _logout(logout_headers)
        is_sse = upstream.headers.get(hdrs.CONTENT_TYPE, "").startswith(SSE_TYPE)
        has_body = upstream.status not in (204, 304) and request.method != hdrs.METH_HEAD
        cap = keep or (0 if is_sse else self._max_response)
        kept: bytes | None = None
        if cap:
            try:
                if is_sse and keep:
                    raise self._failures.too_large(
                        upstream, exchange, "an event stream cannot be kept as a deferred answer"
                    )
                kept = await self._read_capped(upstream, cap, exchange) if has_body else b""
            except BaseException:
                await asyncio.shield(self.sessions.abandon(turn))  # nothing of it reaches the client
                raise
        headers = strip_hop_by_hop(upstream.headers)
        path_map = turn.replica.path_map if turn.replica is not None else None
        if path_map is not None and headers.keys() & REVERSED:
            # A `;jsessionid=` in a redirect stays only for a client that carries its session that way.
            reverse(headers, path_map, "" if turn.carried.carrier == "path" else self._path_param)
        await self.sessions.finish(turn, upstream.status, headers)
        exchange.session = turn.session_id
        if kept is not None:
            if has_body:
                headers[hdrs.CONTENT_LENGTH] = str(len(kept))
            elif upstream.content_length is not None and upstream.status not in (204, 304):
                headers[hdrs.CONTENT_LENGTH] = str(upstream.content_length)  # a HEAD's: as parsed, see below
            exchange.bytes_out = len(kept)
            self.metrics.overhead.observe(overhead + time.perf_counter() - received)
            return Whole(upstream.status, upstream.reason or "", headers, kept)
        # RFC 9110 §8.6: a 304 may carry the Content-Length of the 200 it stands for; no body follows it.
        length = upstream.content_length if upstream.status not in (204, 304) else None
        if length is not None:
            # The value as parsed, never the bot's spelling: "000…03" is valid, but a client or a proxy in
            # front of us may read it with int(), which refuses more than 4,300 digits.
            headers[hdrs.CONTENT_LENGTH] = str(length)
        if not is_sse and length is not None and length <= SMALL_BODY and request.method != hdrs.METH_HEAD:
            # A chat turn's JSON: read it whole and send head and body in one write (measured: the
            # separate header write was ~10% of the per-request cost). Long or unsized bodies stream.
            try:
                body = await upstream.content.readexactly(length)
            except BODY_FAILURES as exc:
                raise self._failures.body_failure(exc, exchange) from None
            exchange.bytes_out = length
            self.metrics.overhead.observe(overhead + time.perf_counter() - received)
            return Whole(upstream.status, upstream.reason or "", headers, body)
        response = exchange.new_stream(upstream.status, upstream.reason or "", headers)
        try:
            await response.prepare(request)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            exchange.client_gone = True
            return response
        self.metrics.overhead.observe(overhead + time.perf_counter() - received)
        if is_sse:
            self.metrics.streams_open.labels(kind="sse").inc()
            self.streams.responses.add(upstream)
        try:
            if request.method == hdrs.METH_HEAD:
                # No body follows. (Never iterate it: aiohttp's shared empty payload yields (b"", True) forever
                # once any response used it, aiohttp#7616 and #11397, and the pump would spin the event loop.)
                try:
                    await response.write_eof()
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    exchange.client_gone = True
            else:
                await self._pump(request, upstream, response, exchange)
        finally:
            if is_sse:
                self.metrics.streams_open.labels(kind="sse").dec()
                self.streams.responses.discard(upstream)
        return response

    async def _read_capped(self, upstream: Response, cap: int, exchange: Exchange) -> bytes:
        """The whole body, refused past `cap` bytes (declared, or counted as it arrives)."""
        length = upstream.content_length
        if length is not None and length > cap:
            raise self._failures.too_large(upstream, exchange, f"it declares {length} bytes")
        try:
            if length is not None:
                return await upstream.content.readexactly(length)
            chunks, size = [], 0
            async for chunk, _ in upstream.content.iter_chunks():
                size += len(chunk)
                if size > cap:
                    raise self._failures.too_large(upstream, exchange, f"it sent more than {cap} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except BODY_FAILURES as exc:
            raise self._failures.body_failure(exc, exchange) from None

    async def _pump(
        self, request: Incoming, upstream: Response, response: Outgoing, exchange: Exchange
    ) -> None:
        """Copy the upstream body chunk by chunk as it arrives; write() awaits drain (back-pressure)."""
        try:
            async for chunk, _ in upstream.content.iter_chunks():
                try:
                    await response.write(chunk)
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    # The browser went away: close the upstream so a bot generating tokens stops.
                    exchange.client_gone = True
                    upstream.close()
                    return
                exchange.bytes_out += len(chunk)
        except Exception as exc:
            if self.streams.closing:
                pass  # shutdown closed the upstream on purpose: end the client's stream cleanly
            else:
                # Headers are gone already: the only honest signal left is to cut the connection,
                # so the client sees a truncated body rather than a complete one.
                reason, _ = self._failures.classify(exc)
                self.metrics.upstream_errors.labels(reason=reason).inc()
                exchange.note = f"upstream {reason} mid-body: {type(exc).__name__}"
                upstream.close()
                if request.transport is not None:
                    request.transport.close()
                return
        try:
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            exchange.client_gone = True


def _logout(headers: CIMultiDict[str]) -> Whole:
    """The Teneo engine's logout answer, given by the gateway for a bot without an end-session endpoint."""
    headers[hdrs.CONTENT_TYPE] = "application/json; charset=utf-8"
    return Whole(200, "", headers, LOGOUT_BODY)
