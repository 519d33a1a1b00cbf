"""The proxy port's listening socket on uvloop: connections accepted in batches.

Why: libuv, under uvloop, accepts one connection per event-loop iteration (libuv#3696). A burst of clients
that connects while the loop is busy serving others is accepted one iteration at a time, and the last of
them waits hundreds of iterations: measured (bench/, 256 connections right after 256 others) a p99 of
~1.4 s and wrk timeouts on uvloop, none on asyncio's loop, which accepts up to the backlog per readiness
event. This listener accepts up to ACCEPT_BATCH connections each time the socket is readable and hands
each to loop.connect_accepted_socket. asyncio's loop, and hosts that are names rather than addresses,
keep aiohttp's TCPSite as it is.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Final, cast

from aiohttp import web

log = logging.getLogger("gateway")

ACCEPT_BATCH: Final = 128
_RESOURCE_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_AFTER: Final = 1.0  # seconds without accepting after running out of descriptors, as asyncio does


class BatchListener:
    """The part of an asyncio Server that aiohttp's sites and runners use: `sockets` and `close()`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._handshakes: set[asyncio.Task[None]] = set()
        self.sockets: list[socket.socket] = [sock]
        self.closed = False
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                log.warning("not accepting connections for %gs: %s", _RETRY_AFTER, exc.strerror)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(_RETRY_AFTER, self._resume)
                return
            conn.setblocking(False)  # the transport sets TCP_NODELAY itself (uvloop's and asyncio's alike)
            task = self._loop.create_task(self._connect(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume(self) -> None:
        if not self.closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:
            conn.close()  # the client left between accept() and here
        except BaseException:  # cancelled at shutdown, or a bug: never leak the accepted socket
            conn.close()
            raise

    def close(self) -> None:
        # Handshakes in flight complete, as asyncio's Server.close() lets its accepted connections do: the
        # front end then closes them (pre_shutdown) or serves their one request with `Connection: close`.
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


def _family(host: str) -> socket.AddressFamily | None:
    """The family of a literal address; None for a name (aiohttp's site resolves those)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


class GatewaySite(web.TCPSite):
    """aiohttp's TCPSite, listening through a BatchListener on uvloop when the host is an address."""

    batched = False  # whether it accepts through a BatchListener (the "listening" log line says so)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = _family(self._host) if isinstance(self._host, str) else None
        # socket.create_server always sets SO_REUSEADDR: a site asked not to reuse the address keeps aiohttp's.
        plain = self._reuse_port or self._reuse_address is False or self._ssl_context is not None
        if family is None or plain or not _is_uvloop(loop):
            await super().start()
            return
        await web.BaseSite.start(self)  # registers the site with its runner
        sock = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        sock.setblocking(False)
        server = self._runner.server
        assert server is not None
        listener = BatchListener(loop, sock, cast(Callable[[], asyncio.Protocol], server))
        self._server = cast(asyncio.AbstractServer, listener)
        self._bound_port = sock.getsockname()[1]
        self.batched = True
