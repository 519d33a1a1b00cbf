"""The proxy port's one HTTP/1.x front end: every connection is an HttpConnection (front_connection.py);
only a WebSocket handshake is handed, with its head, to aiohttp's server, which owns that socket after.

Why not aiohttp's server for everything: measured on the proxy's path (bench/, issue 6), its machinery
(RequestHandler, web.Request, routing, middleware, StreamResponse) cost more per request than all the
gateway does; an aiohttp "hello" server answers ~14k requests/s on the bench machine, httptools ~65k. And one
server owns every limit, timeout and write path (issue 16), where two shared them before.

Timeouts cost nothing per request: no timer is armed per request or phase. One watcher task wakes every
`tick` (a quarter of the shortest timeout, at most a second: nginx scans its timers the same coarse way),
refreshes the coarse clock `now` that connections stamp their phases with, and ends what waited too long.
Time the whole process stood still (it woke more than a tick late) counts against no client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final, cast

from aiohttp import web

from gateway.config import Config
from gateway.edge.cors import Cors
from gateway.edge.front_connection import HttpConnection
from gateway.edge.front_request import Request
from gateway.edge.routes import LocalRoutes
from gateway.errors import TooManyConnections
from gateway.ops.metrics import Metrics
from gateway.upstream.proxy import Proxy

log = logging.getLogger("gateway")

# Seconds the unread bytes of a closing connection are drained (nginx's lingering_timeout: 5).
LINGER_SECONDS: Final = 2.0
MAX_HEAD: Final = 64 * 1024  # bytes of request head, whatever the field limits add up to (nginx: 4 x 8 KiB)
_REJECT_LOG_INTERVAL: Final = 10.0  # seconds between the log lines about refused connections


class FrontEnd:
    """The protocol factory the proxy's sites listen with, and what every connection shares."""

    def __init__(self, fallback: web.Server, app: web.Application) -> None:
        from gateway.app import CONFIG, CORS, METRICS, PROXY, ROUTES  # app.py imports this module

        config: Config = app[CONFIG]
        self.fallback = fallback
        self.proxy: Proxy = app[PROXY]
        self.routes: LocalRoutes = app[ROUTES]
        self.cors: Cors = app[CORS]
        self.metrics: Metrics = app[METRICS]
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()
        self.connections: set[HttpConnection] = set()
        self.closing = False
        self.inflight = 0
        listen = config.listen
        self.max_field_size = listen.max_field_size
        self.max_headers = listen.max_headers
        self.max_head = max(MAX_HEAD, 2 * listen.max_field_size)
        self.small_head = min(self.max_head, listen.max_field_size)  # a head no longer cannot be over a limit
        self.max_body = config.upstream.max_body_size
        self.buffer_body = min(config.upstream.buffer_request_body, config.upstream.max_body_size)
        self.max_connections = listen.max_connections
        self.max_inflight = listen.max_inflight
        self.header_timeout = listen.header_timeout
        self.body_timeout = listen.body_timeout
        self.keepalive_timeout = listen.keepalive_timeout
        self.send_timeout = listen.send_timeout
        self.linger = min(LINGER_SECONDS, listen.header_timeout)
        shortest = min(self.header_timeout, self.body_timeout, self.keepalive_timeout, self.send_timeout)
        self.tick = min(1.0, shortest / 4)
        self.too_many = TooManyConnections(
            "The gateway has as many connections as it accepts; retry shortly."
        )
        self._rejected_since_log = 0
        self._reject_logged = 0.0
        self.metrics.connections_open.set_function(self.open_connections)
        self._watcher = self.loop.create_task(self._watch())

    def __call__(self) -> HttpConnection:
        return HttpConnection(self)

    def open_connections(self) -> int:
        """Client connections on the proxy port, ours and those aiohttp's server took over."""
        return len(self.connections) + len(self.fallback.connections)

    def hand_over(self, conn: HttpConnection, request: Request) -> None:
        """Give a WebSocket handshake's connection, its head replayed, to aiohttp's server."""
        transport = conn.transport
        if transport is None or conn.closed:
            return
        self.connections.discard(conn)
        handler = cast(asyncio.Protocol, self.fallback())
        transport.set_protocol(handler)
        handler.connection_made(transport)
        transport.resume_reading()
        handler.data_received(conn.replay_head(request) + (request.upgrade or b""))

    # -- accounting ------------------------------------------------------------------------------------

    def rejected(self) -> None:
        """A connection over listen.max_connections: counted, and logged at most every few seconds."""
        self.metrics.connections_rejected.inc()
        self._rejected_since_log += 1
        now = time.monotonic()
        if now - self._reject_logged >= _REJECT_LOG_INTERVAL:
            log.warning(
                "refused %d connection(s): listen.max_connections (%d) are open",
                self._rejected_since_log,
                self.max_connections,
            )
            self._reject_logged, self._rejected_since_log = now, 0

    def timed_out(self, phase: str, peer: str | None) -> None:
        self.metrics.client_timeouts[phase].inc()
        if peer is not None:  # an idle keep-alive connection ending is no problem worth a line
            log.info("client %s timed out waiting for its request %s", peer, phase)

    async def _watch(self) -> None:
        loop = self.loop
        while True:
            due = loop.time() + self.tick
            await asyncio.sleep(self.tick)
            now = self.now = loop.time()
            if (stood := now - due) > self.tick:
                # The loop stood still (a paused or CPU-starved process, a long callback): that time counts
                # against no client. What was read since it went on was stamped with the stale clock, and
                # this may run before the loop polls again (a poll whose deadline passed is skipped), so
                # every stamp moves by the pause and the loop reads once, with the fresh clock, before judging.
                for conn in self.connections:
                    conn.excuse(stood)
                await asyncio.sleep(0)
            for conn in list(self.connections):
                try:
                    conn.check(now)
                except Exception:  # a bug of ours: one line, and the other connections are still watched
                    log.exception("failed to check a connection's timeouts")
                    conn.abort()

    # -- shutdown (runners and sites call these as they would on aiohttp's web.Server) -------------

    def pre_shutdown(self) -> None:
        self.closing = True
        self.fallback.pre_shutdown()
        for conn in list(self.connections):
            conn.close_when_idle()

    async def shutdown(self, timeout: float | None = None) -> None:
        await asyncio.gather(
            self.fallback.shutdown(timeout), *(conn.finish(timeout) for conn in list(self.connections))
        )
        self._watcher.cancel()
        self.connections.clear()


class GatewayRunner(web.AppRunner):
    """An AppRunner whose sites listen with the FrontEnd; aiohttp's server takes WebSocket handshakes."""

    async def _make_server(self) -> web.Server:
        fallback = await super()._make_server()
        # FrontEnd is no aiohttp Server but offers what runners and sites call on one: __call__,
        # pre_shutdown and shutdown.
        return cast(web.Server, FrontEnd(fallback, self.app))
