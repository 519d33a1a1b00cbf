"""One client connection on the proxy port: HTTP/1.x parsed with httptools (llhttp), one request served at
a time in order (pipelined ones wait, parsed), with the edge's limits and timeouts.

The model is uvicorn's httptools_impl.py: the parser is fed every byte as it arrives and its callbacks
build the requests (RequestReader, front_reader.py, the base class of HttpConnection here); a request is
served by one task while reading continues under flow control. Unlike
uvicorn it buffers a body up to upstream.buffer_request_body before serving (so a slow uploader holds no bot
connection), refuses what it cannot frame with certainty, and keeps no timer per request: FrontEnd's
watcher compares each connection's `phase` and `since` with the listen.*_timeout every tick (frontend.py).

A WebSocket handshake is handed, head and all, to aiohttp's server, which owns that connection afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final, cast

from aiohttp import web
from multidict import CIMultiDict

from gateway.edge.chunks import HIGH_WATER
from gateway.edge.front_reader import BODY, BUSY, HEAD, IDLE, LINGER, PIPELINED, RequestReader
from gateway.edge.front_request import Request
from gateway.edge.front_response import StreamWriter, whole_bytes
from gateway.edge.messages import Outgoing, Whole
from gateway.errors import GatewayError, RequestTimeout, UpstreamBusy, error_whole, unexpected_error
from gateway.upstream.headers import encode_head, redact_path

if TYPE_CHECKING:
    from gateway.edge.frontend import FrontEnd

log = logging.getLogger("gateway")

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpConnection(RequestReader):
    """One client connection: its requests (read by RequestReader) served one at a time, in order."""

    def __init__(self, front: FrontEnd) -> None:
        super().__init__(front)
        self._task: asyncio.Task[None] | None = None
        self._counted = False  # the request being served counts in front.inflight
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.closing = False  # the connection ends after the response being written
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

    # -- serving -------------------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Serve the next request once it may be served, answer a refusal, or go idle."""
        if self._task is not None:
            if self._queue:
                self._pause(PIPELINED)
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
            body.stream()
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
        if self._paused & PIPELINED:
            self._resume(PIPELINED)
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

    # -- writing -------------------------------------------------------------------------------------

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

    def excuse(self, seconds: float) -> None:
        """The event loop stood still for `seconds`: no phase of this connection waited during them."""
        self.since += seconds
        if self.send_since:
            self.send_since += seconds

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
