"""Helpers for the front-end tests: a raw HTTP/1.1 client, request bytes, the front end and its connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from gateway_helpers import LOOPBACK, Gateway, wait
from multidict import CIMultiDict

from gateway.edge.front_connection import HttpConnection
from gateway.edge.frontend import FrontEnd

MiB = 1024 * 1024


# --- a raw HTTP/1.1 client ------------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """One response as it came off the wire."""

    version: str
    status: int
    headers: CIMultiDict[str]
    body: bytes


class Conn:
    """A client connection: bytes go out exactly as given, responses are read one at a time by their framing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await wait(self.writer.drain())

    async def answer(self, method: str = "GET") -> Answer:
        """The next response; `method` is the request's, since a HEAD's answer has no body."""
        head = await wait(self.reader.readuntil(b"\r\n\r\n"))
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
        code = int(status)
        if method == "HEAD" or code < 200 or code in (204, 304):
            body = b""
        elif "chunked" in headers.get("Transfer-Encoding", ""):
            body = await wait(self._chunked())
        elif "Content-Length" in headers:
            body = await wait(self.reader.readexactly(int(headers["Content-Length"])))
        else:
            body = await wait(self.reader.read())
        return Answer(version, code, headers, body)

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                assert await self.reader.readuntil(b"\r\n") == b"\r\n"  # no trailers expected
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            assert await self.reader.readexactly(2) == b"\r\n"

    async def closed_by_server(self) -> bool:
        """True when the server closes the connection without sending anything more."""
        rest: bytes = await wait(self.reader.read())
        return rest == b""

    async def reset(self) -> None:
        """Close with SO_LINGER 0: the server gets an RST, not a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await wait(self.writer.wait_closed())


Connect = Callable[..., Awaitable[Conn]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """connect(port, rcvbuf=None) -> Conn; every connection is closed at teardown."""
    conns: list[Conn] = []

    async def open_conn(port: int, rcvbuf: int | None = None) -> Conn:
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one write, one segment
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
        sock.setblocking(False)
        await wait(asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port)))
        conn = Conn(*await asyncio.open_connection(sock=sock))
        conns.append(conn)
        return conn

    yield open_conn
    for conn in conns:
        await conn.close()


def get(target: str, *extra: str) -> bytes:
    return "".join(
        [f"GET {target} HTTP/1.1\r\nHost: gw.example\r\n", *(f"{h}\r\n" for h in extra), "\r\n"]
    ).encode()


def post(target: str, body: bytes, *extra: str) -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: gw.example\r\nContent-Length: {len(body)}\r\n"
    return "".join([head, *(f"{h}\r\n" for h in extra), "\r\n"]).encode() + body


# --- the front end and its connections ---------------------------------------------------------------


def front_end(gw: Gateway) -> FrontEnd:
    runner = gw.client.server.runner
    assert runner is not None
    front = runner.server
    assert isinstance(front, FrontEnd)
    return front


def front_connections(gw: Gateway) -> int:
    """Client connections the front end serves now."""
    return len(front_end(gw).connections)


def handed_over(gw: Gateway) -> int:
    """Client connections aiohttp's server took over (WebSocket handshakes)."""
    return len(front_end(gw).fallback.connections)


def only_connection(gw: Gateway) -> HttpConnection:
    (conn,) = front_end(gw).connections
    return conn
