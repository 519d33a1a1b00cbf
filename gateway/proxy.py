"""Forward one request upstream and stream the answer back, byte for byte."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Config
from gateway.cors import Cors
from gateway.deferral import DIALOGFLOW_MAX_BODY, Deferrals
from gateway.errors import (
    BadRequest,
    BadRequestBody,
    BodyTooLarge,
    ClientFault,
    ReplicaUnavailable,
    StoreUnavailable,
    UpstreamBusy,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.headers import (
    REQUEST_ONLY_DROP,
    WEBSOCKET_HANDSHAKE,
    is_trusted,
    is_websocket_upgrade,
    redact_path,
    set_forwarded,
    strip_hop_by_hop,
)
from gateway.messages import Incoming, NewStream, Outgoing, Whole
from gateway.metrics import Metrics
from gateway.placing import NOTHING, Checked, Placer
from gateway.reverse import REVERSED, reverse
from gateway.sessions import LOGOUT, SessionManager, Turn, short_id
from gateway.upstream_client import Pool, PoolBusy, Response, UpstreamConnectError
from gateway.upstreams import Replica
from gateway.websocket import proxy_websocket

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

SSE_TYPE = "text/event-stream"
LOGOUT_BODY = json.dumps(LOGOUT).encode()
# How reading a bot's body fails (ConnectionError: the bot closed the connection mid-body).
_BODY_FAILURES = (asyncio.IncompleteReadError, aiohttp.ClientPayloadError, ConnectionError, TimeoutError)
# Bytes: a known-length response body up to this is read whole, then sent with its head.
SMALL_BODY = 64 * 1024
_COOKIE = frozenset({hdrs.COOKIE})  # rebuilt by the session layer: merged, session set, gateway's own removed


def aiohttp_stream(status: int, reason: str, headers: CIMultiDict[str]) -> Outgoing:
    return web.StreamResponse(status=status, reason=reason, headers=headers)


@dataclass(slots=True)
class Exchange:
    """What one proxied request did, for the access log and metrics."""

    new_stream: NewStream  # how a streamed response is opened on this request's connection
    started: float = field(default_factory=time.perf_counter)
    upstream_status: int | None = None
    session: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    body_too_large: bool = False
    client_gone: bool = False
    note: str = ""


class Streams:
    """Open SSE responses and WebSockets, so shutdown can close them with "going away"."""

    def __init__(self) -> None:
        self.responses: set[Response] = set()
        self.sockets: set[web.WebSocketResponse] = set()
        self.closing = False

    async def close_all(self) -> None:
        self.closing = True
        for upstream in list(self.responses):
            upstream.close()  # the read loop sees EOF and ends the client's stream cleanly
        await asyncio.gather(
            *(
                ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"gateway shutting down")
                for ws in self.sockets
            ),
            return_exceptions=True,
        )


def build_pool(config: Config, metrics: Metrics) -> Pool:
    """The proxy's one upstream HTTP client."""
    up = config.upstream
    return Pool(
        limit=up.pool_size,
        keepalive_timeout=up.keepalive_timeout,
        connect_timeout=up.connect_timeout,
        read_timeout=up.read_timeout,
        queue_timeout=up.queue_timeout,
        on_wait=metrics.upstream_queue.observe,
    )


def build_client(config: Config) -> aiohttp.ClientSession:
    """aiohttp's client, for WebSocket upgrades and the readiness probe only."""
    up = config.upstream
    connector = aiohttp.TCPConnector(limit=up.pool_size, keepalive_timeout=up.keepalive_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        # The upstream's cookies belong to the client, never to the gateway nor to another user.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Compressed bodies pass through byte-exact with their Content-Encoding.
        auto_decompress=False,
        # total=None: a chat stream may last minutes; sock_read is the silence allowed between bytes.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=up.connect_timeout, sock_read=up.read_timeout),
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
        raise_for_status=False,
        trust_env=False,
    )


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
        self._drop_websocket = self._drop | WEBSOCKET_HANDSHAKE
        self._path_param = config.session.path_param.lower()
        self._placer = Placer(config.session)
        self._deferrals = deferrals
        self._max_response = config.upstream.max_response_size  # 0: no cap

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
            self._access(request, status, elapsed, exchange)

    @staticmethod
    def request_target(request: Incoming) -> str:
        """The raw request target (path and query, never re-quoted)."""
        target = request.raw_path
        if not target.startswith("/"):
            if target == "*":
                raise BadRequest("The asterisk request target is not supported.")
            # Absolute form (`GET http://other.host/x`): forward its path only, never to that host.
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return target

    def upstream_headers(self, request: Incoming, turn: Turn, *, websocket: bool = False) -> CIMultiDict[str]:
        """Request headers for the upstream: hop-by-hop and gateway-owned stripped, session and X-Forwarded-* set."""
        headers = strip_hop_by_hop(request.headers, self._drop_websocket if websocket else self._drop)
        headers.extend(turn.headers)
        peer = request.remote
        set_forwarded(
            headers,
            peer=peer,
            scheme=request.scheme,
            host=request.headers.get(hdrs.HOST),
            trusted=is_trusted(peer, self._trusted),
        )
        return headers

    async def _proxy(self, request: Incoming, exchange: Exchange) -> web.StreamResponse | Outgoing | Whole:
        preflight = self.cors.preflight(request)
        if preflight is not None:
            return preflight
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            raise BodyTooLarge(
                f"The request body of {declared} bytes exceeds the limit of {self._max_body} bytes."
            )
        target = self.request_target(request)
        checked = NOTHING
        deferrals = self._deferrals
        webhook = (
            deferrals.dialogflow
            and request.body_exists
            and 0 < (request.content_length or 0) <= min(DIALOGFLOW_MAX_BODY, self._buffer)
        )
        if self._placer.reads_body or (webhook and deferrals.enabled):
            body = await self._whole_body(request, exchange) if request.body_exists else None
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
                    return await proxy_websocket(self, request, self._url(turn), turn, exchange)
                sent = time.perf_counter()
                if deferrals.enabled and self._deferrable(request, checked):
                    send = self._send(request, turn, exchange, checked)
                    upstream_or_interim = await self._send_or_defer(request, turn, exchange, send, sent)
                    if isinstance(upstream_or_interim, Whole):
                        handed_over = True
                        return upstream_or_interim
                    upstream = upstream_or_interim
                else:
                    upstream = await self._send(request, turn, exchange, checked)
            except BaseException:
                await asyncio.shield(self.sessions.abandon(turn))
                raise
            # (inline, not _respond_to(): one coroutine less on every request)
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

    async def _respond_to(
        self,
        request: Incoming,
        upstream: Response,
        exchange: Exchange,
        turn: Turn,
        sent: float,
        keep: int = 0,
    ) -> web.StreamResponse | Outgoing | Whole:
        received = time.perf_counter()
        exchange.upstream_status = upstream.status
        self.metrics.upstream_ttfb.observe(received - sent)
        try:
            return await self._respond(
                request,
                upstream,
                exchange,
                turn,
                overhead=sent - exchange.started,
                received=received,
                keep=keep,
            )
        finally:
            upstream.release()

    def _deferrable(self, request: Incoming, checked: Checked) -> bool:
        """Only a request whose body is read whole (so nothing of it is left to stream), never HEAD."""
        if request.method == hdrs.METH_HEAD:
            return False
        length = request.content_length
        return (
            checked.body is not None
            or not request.body_exists
            or (length is not None and length <= self._buffer)
        )

    async def _send_or_defer(
        self,
        request: Incoming,
        turn: Turn,
        exchange: Exchange,
        send: Coroutine[Any, Any, Response],
        sent: float,
    ) -> Response | Whole:
        """The bot's head if it comes within deferred.after; else an interim answer, the exchange going on."""
        task = asyncio.ensure_future(send)
        try:
            done, _ = await asyncio.wait({task}, timeout=self._deferrals.after)
            if done:
                return task.result()
            # Bound to the session the client carries; a Dialogflow CX agent carries none of ours (the 128-bit
            # token is the proof there).
            session = turn.session_id if turn.live or self.sessions.config.issuer == "gateway" else None
            bound = None if self._deferrals.dialogflow else session or turn.carried.session_id
            try:
                token = await self._deferrals.open(bound)
            except StoreUnavailable:
                token = None  # nowhere to keep the answer: wait for it instead
            if token is None:  # max_pending (or no store): wait as without deferral
                return await task
        except BaseException:
            task.cancel()  # the client left (or the store failed): the bot's request goes with it
            raise
        self._deferrals.run(token, self._answer_later(request, turn, exchange, task, sent))
        exchange.note = ""
        return self._deferrals.interim(token, self.sessions.known_headers(turn))

    async def _answer_later(
        self, request: Incoming, turn: Turn, exchange: Exchange, task: asyncio.Future[Response], sent: float
    ) -> Whole:
        """A deferred exchange's rest: the bot's answer, whole and processed as usual, for the store."""
        try:
            try:
                upstream = await task
            except BaseException:
                await asyncio.shield(self.sessions.abandon(turn))
                raise
            response = await self._respond_to(
                request, upstream, exchange, turn, sent, keep=self._deferrals.answer_cap
            )
            assert isinstance(response, Whole)  # keep: read whole
            return response
        finally:
            if exchange.note:
                log.warning("%s %s (deferred): %s", request.method, _log_path(request), exchange.note)
            assert turn.replica is not None
            turn.replica.in_flight -= 1

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
            headers = self.upstream_headers(request, turn)
            target = turn.carried.target
            try:
                if checked.body is None:
                    body = await self._request_body(request, exchange)
                else:  # read whole for session placement or carriage; placed again after a re-pin
                    body = self._placer.body(checked, turn.session_id)
                if self._placer.places:
                    target = self._placer.target(target, turn.session_id)
                upstream = await self.pool.request(
                    replica.origin, request.method, replica.prefix + target, headers, body
                )
            except Exception as exc:
                error = self._request_failure(exc, exchange, replica)
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

    async def _request_body(
        self, request: Incoming, exchange: Exchange
    ) -> bytes | AsyncIterator[bytes] | None:
        """A body the front end read whole is sent with the head in one write; a larger one streams."""
        if not request.body_exists:
            return None
        length = request.content_length
        if length is not None and length <= self._buffer:
            try:
                body: bytes = await request.content.readexactly(length)
            except (ConnectionError, asyncio.IncompleteReadError, aiohttp.ClientConnectionResetError):
                exchange.client_gone = True
                raise asyncio.CancelledError() from None
            exchange.bytes_in = length
            return body
        return self._body(request, exchange)

    async def _whole_body(self, request: Incoming, exchange: Exchange) -> bytes:
        """The body read whole, up to upstream.buffer_request_body, for session placement or carriage."""
        length = request.content_length
        too_large = BadRequestBody(
            f"The request body is over upstream.buffer_request_body ({self._buffer} bytes), so no session id "
            f"can be placed or read at {self._placer.pointers()}."
        )
        if length is not None and length > self._buffer:
            raise too_large
        chunks: list[bytes] = []
        try:
            if length is not None:
                chunks.append(await request.content.readexactly(length))
            else:
                async for chunk in request.content.iter_any():
                    chunks.append(chunk)
                    exchange.bytes_in += len(chunk)
                    if exchange.bytes_in > self._buffer:
                        raise too_large
        except (ConnectionError, asyncio.IncompleteReadError, aiohttp.ClientConnectionResetError):
            exchange.client_gone = True
            raise asyncio.CancelledError() from None
        body = b"".join(chunks)
        exchange.bytes_in = len(body)
        return body

    async def _body(self, request: Incoming, exchange: Exchange) -> AsyncIterator[bytes]:
        """The request body as it arrives, counted against upstream.max_body_size."""
        try:
            async for chunk in request.content.iter_any():
                exchange.bytes_in += len(chunk)
                if exchange.bytes_in > self._max_body:
                    exchange.body_too_large = True
                    raise BodyTooLarge(f"The request body exceeds the limit of {self._max_body} bytes.")
                yield chunk
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            exchange.client_gone = True
            raise

    def _request_failure(self, exc: BaseException, exchange: Exchange, replica: Replica) -> BaseException:
        """Map a failed upstream request to the gateway error the client gets; count and log it once.
        A client's fault (a slow or oversized body, a client gone) and a full pool never count against
        the replica: they do not mark it down, so no other user's session moves."""
        if isinstance(exc, ClientFault):
            return exc
        if isinstance(exc, PoolBusy):
            exchange.note = "upstream busy: no connection within upstream.queue_timeout"
            return UpstreamBusy(
                f"No connection to the bot became free within {self.config.upstream.queue_timeout:g} s."
            )
        if exchange.body_too_large:
            return BodyTooLarge(f"The request body exceeds the limit of {self._max_body} bytes.")
        if exchange.client_gone:
            return asyncio.CancelledError()
        reason, error = self._classify(exc)
        self.metrics.upstream_errors.labels(reason=reason).inc()
        self.metrics.replica_errors.labels(replica=replica.name).inc()
        if reason in ("connect", "timeout"):
            self.upstreams.mark_down(replica, reason)
        exchange.note = f"upstream {reason}: {type(exc).__name__}"
        return error

    def _classify(self, exc: BaseException) -> tuple[str, Exception]:
        if isinstance(
            exc, UpstreamConnectError | aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
        ):
            return "connect", UpstreamUnavailable("The upstream could not be reached.")
        if isinstance(exc, asyncio.TimeoutError):
            return "timeout", UpstreamTimeout(
                f"The upstream did not answer within {self.config.upstream.read_timeout:g} seconds."
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionError):
            return "reset", UpstreamUnavailable("The upstream closed the connection before answering.")
        return "protocol", UpstreamUnavailable("The upstream sent an invalid HTTP response.")

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
                    raise self._too_large(
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
            except _BODY_FAILURES as exc:
                raise self._body_failure(exc, exchange) from None
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
            raise self._too_large(upstream, exchange, f"it declares {length} bytes")
        try:
            if length is not None:
                return await upstream.content.readexactly(length)
            chunks, size = [], 0
            async for chunk, _ in upstream.content.iter_chunks():
                size += len(chunk)
                if size > cap:
                    raise self._too_large(upstream, exchange, f"it sent more than {cap} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except _BODY_FAILURES as exc:
            raise self._body_failure(exc, exchange) from None

    def _body_failure(self, exc: BaseException, exchange: Exchange) -> Exception:
        """The bot failed mid-body (before anything reached the client): counted, noted, mapped."""
        reason, error = self._classify(exc)
        self.metrics.upstream_errors.labels(reason=reason).inc()
        exchange.note = f"upstream {reason} in body: {type(exc).__name__}"
        return error

    def _too_large(self, upstream: Response, exchange: Exchange, why: str) -> UpstreamResponseTooLarge:
        upstream.close()  # the rest is never read: the connection cannot be reused
        self.metrics.upstream_errors.labels(reason="too_large").inc()
        exchange.note = f"upstream answer too large: {why}"
        return UpstreamResponseTooLarge(f"The bot's answer is too large: {why}.")

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
                reason, _ = self._classify(exc)
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

    def _access(self, request: Incoming, status: int, elapsed: float, exchange: Exchange) -> None:
        if exchange.note:
            log.warning("%s %s: %s", request.method, _log_path(request), exchange.note)
        if not self.config.log.access:
            return
        access_log.info(
            "%s %s %s",
            request.method,
            _log_path(request),
            status,
            extra={
                "fields": {
                    "method": request.method,
                    "path": _log_path(request),
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "upstream_status": exchange.upstream_status,
                    "bytes_in": exchange.bytes_in,
                    "bytes_out": exchange.bytes_out,
                    "client": request.remote,
                    "session": short_id(exchange.session),
                }
            },
        )


def _logout(headers: CIMultiDict[str]) -> Whole:
    """The Teneo engine's logout answer, given by the gateway for a bot without an end-session endpoint."""
    headers[hdrs.CONTENT_TYPE] = "application/json; charset=utf-8"
    return Whole(200, "", headers, LOGOUT_BODY)


def _log_path(request: Incoming) -> str:
    return redact_path(request.raw_path)
