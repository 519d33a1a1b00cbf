"""The recording raw bot for the hostile tests (tests/test_hostile_*.py): an asyncio server that records, byte
for byte, what reached it on each connection, and answers each request as the test scripts it: a complete
answer, a late one, stray bytes or EOF on the idle keep-alive connection after it, a 101, silence, a large
body, or a body never read."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from frontend_helpers import Conn
from gateway_helpers import LOOPBACK, wait
from multidict import CIMultiDict

# --- the bot ------------------------------------------------------------------------------------------------


class _Eof(Exception):
    """The gateway closed (or reset) the bot's connection."""


@dataclass(eq=False, slots=True)
class BotRequest:
    """One request as it reached the bot."""

    conn: BotConnection
    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes  # de-chunked
    raw: bytes  # head and framed body, exactly as they arrived


class BotConnection:
    """One connection the gateway opened to the bot, and everything that arrived on it."""

    def __init__(
        self, bot: RawBot, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.bot = bot
        self.index = index
        self.reader = reader
        self.writer = writer
        self.received = bytearray()
        self.requests: list[BotRequest] = []
        self.closed = asyncio.Event()  # the gateway closed the connection (EOF or reset)
        self.sent = 0  # bytes the bot's actions wrote
        self.write_failed = False  # a write met a connection the gateway had closed

    # -- reading, recorded -----------------------------------------------------------------------------

    async def _readuntil(self, separator: bytes) -> bytes:
        try:
            data = await self.reader.readuntil(separator)
        except asyncio.IncompleteReadError as exc:
            self.received += exc.partial
            raise _Eof() from None
        except asyncio.LimitOverrunError:
            data = await self.reader.read(1 << 20)  # no HTTP a gateway sends: recorded, then closed
            self.received += data
            raise _Eof() from None
        except ConnectionError:
            raise _Eof() from None
        self.received += data
        return data

    async def _readexactly(self, n: int) -> bytes:
        try:
            data = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            self.received += exc.partial
            raise _Eof() from None
        except ConnectionError:
            raise _Eof() from None
        self.received += data
        return data

    async def read_head(self) -> BotRequest:
        """The next request's head; its body, if any, is still unread (read_body)."""
        head = await self._readuntil(b"\r\n\r\n")
        request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
        return BotRequest(self, method, target, headers, b"", head)

    async def read_body(self, request: BotRequest) -> None:
        """Read the request's body by its framing: `body` de-chunked, `raw` as it came."""
        headers = request.headers
        raw = [request.raw]
        body = []
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = await self._readuntil(b"\r\n")
                raw.append(size_line)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (trailer := await self._readuntil(b"\r\n")) != b"\r\n":
                        raw.append(trailer)
                    raw.append(trailer)
                    break
                chunk = await self._readexactly(size + 2)
                raw.append(chunk)
                body.append(chunk[:-2])
        elif "Content-Length" in headers:
            data = await self._readexactly(length_of(headers["Content-Length"]))
            raw.append(data)
            body.append(data)
        request.body, request.raw = b"".join(body), b"".join(raw)

    async def read_until_closed(self) -> None:
        """Record whatever arrives until the gateway closes the connection."""
        with contextlib.suppress(ConnectionError):
            while data := await self.reader.read(65536):
                self.received += data

    # -- writing -----------------------------------------------------------------------------------------

    async def send(self, data: bytes) -> bool:
        """Write and drain; False when the gateway has closed the connection."""
        if self.writer.is_closing():
            self.write_failed = True
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            self.write_failed = True
            return False
        self.sent += len(data)
        return True

    def later(self, delay: float, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work` after `delay` seconds, while the connection reads on (the idle keep-alive connection)."""

        async def run() -> None:
            await asyncio.sleep(delay)
            await work()

        self.bot.spawn(run())

    def half_close(self) -> None:
        """Send FIN: the bot will say nothing more on this connection (it still reads)."""
        if not self.writer.is_closing() and self.writer.can_write_eof():
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write_eof()

    async def serve(self) -> None:
        try:
            while True:
                request = await self.read_head()
                action = self.bot.action_for(request)
                if action is not ignore_body:
                    await self.read_body(request)
                self.requests.append(request)
                self.bot.requests.append(request)
                await action(request)
                if self.writer.is_closing():
                    break
        except _Eof:
            pass
        finally:
            self.closed.set()
            self.writer.close()


Action = Callable[[BotRequest], Awaitable[None]]


class RawBot:
    """A bot on loopback that records every byte and answers the n-th request it reads with `script[n]`,
    then with `default`; each request knows its connection (`request.conn`)."""

    def __init__(self, script: list[Action], default: Action) -> None:
        self.script = list(script)
        self.default = default
        self.connections: list[BotConnection] = []
        self.requests: list[BotRequest] = []
        self.url = ""
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def received(self) -> bytes:
        """Every byte that reached the bot, on any connection (the readiness probe sends none)."""
        return b"".join(bytes(conn.received) for conn in self.connections)

    @property
    def targets(self) -> list[str]:
        return [request.target for request in self.requests]

    def action_for(self, request: BotRequest) -> Action:
        return self.script.pop(0) if self.script else self.default

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = BotConnection(self, len(self.connections), reader, writer)
        self.connections.append(conn)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await conn.serve()
        finally:
            self._tasks.discard(task)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_connect, LOOPBACK, 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://{LOOPBACK}:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in self.connections:
            conn.writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.server is not None:
            await self.server.wait_closed()


StartRawBot = Callable[..., Awaitable[RawBot]]


@pytest.fixture
async def start_raw_bot() -> AsyncIterator[StartRawBot]:
    """start(*script, default=echo) -> a started RawBot; stopped at teardown."""
    bots: list[RawBot] = []

    async def start(*script: Action, default: Action | None = None) -> RawBot:
        bot = RawBot(list(script), default or echo)
        await bot.start()
        bots.append(bot)
        return bot

    yield start
    for bot in bots:
        await bot.stop()


# --- what the bot answers -----------------------------------------------------------------------------------


def response(body: bytes = b"ok", *headers: str, status: str = "200 OK") -> bytes:
    """A complete, sized HTTP/1.1 response."""
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n" + "".join(f"{h}\r\n" for h in headers)
    return (head + "\r\n").encode() + body


def echo_body(request: BotRequest) -> bytes:
    return f"{request.method} {request.target} ".encode() + request.body


async def echo(request: BotRequest) -> None:
    """`<method> <target> <body>`, sized; a HEAD gets the head alone."""
    data = response(echo_body(request))
    if request.method == "HEAD":
        data = data[: data.index(b"\r\n\r\n") + 4]
    await request.conn.send(data)


def send(data: bytes) -> Action:
    """Answer with exactly these bytes (any framing, right or wrong)."""

    async def act(request: BotRequest) -> None:
        await request.conn.send(data)

    return act


def then_stray(answer: bytes, stray: bytes, delay: float = 0.1) -> Action:
    """A complete answer, then `stray` bytes `delay` seconds later on the idle keep-alive connection."""

    async def act(request: BotRequest) -> None:
        conn = request.conn
        await conn.send(answer)

        async def stray_bytes() -> None:
            await conn.send(stray)

        conn.later(delay, stray_bytes)

    return act


def then_eof(answer: bytes, delay: float = 0.1) -> Action:
    """A complete answer, then EOF (FIN) `delay` seconds later on the idle keep-alive connection."""

    async def act(request: BotRequest) -> None:
        conn = request.conn
        await conn.send(answer)

        async def eof() -> None:
            conn.half_close()

        conn.later(delay, eof)

    return act


def hold(release: asyncio.Event, answer: bytes | None = None) -> Action:
    """Answer only once `release` is set (echo, unless `answer` is given)."""

    async def act(request: BotRequest) -> None:
        await release.wait()
        await request.conn.send(answer if answer is not None else response(echo_body(request)))

    return act


def send_and_close(data: bytes) -> Action:
    """Answer with exactly these bytes, then close the connection (a close-delimited body ends here)."""

    async def act(request: BotRequest) -> None:
        await request.conn.send(data)
        request.conn.writer.close()

    return act


async def silent(request: BotRequest) -> None:
    """Never answer; return when the gateway closes the connection."""
    await request.conn.read_until_closed()


async def ignore_body(request: BotRequest) -> None:
    """Read the request's head only: never read its body, never answer (a bot stuck before an upload)."""
    await asyncio.get_running_loop().create_future()  # until the bot is stopped


def late(delay: float) -> Action:
    """Echo, `delay` seconds after the request arrived."""

    async def act(request: BotRequest) -> None:
        await asyncio.sleep(delay)
        await echo(request)

    return act


def large(size: int, piece: int = 256 * 1024) -> Action:
    """A sized body of `size` bytes, written as fast as the gateway takes it (until it closes the connection)."""

    async def act(request: BotRequest) -> None:
        conn = request.conn
        if not await conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()):
            return
        block = b"x" * piece
        for start in range(0, size, piece):
            if not await conn.send(block[: min(piece, size - start)]):
                return

    return act


def sessions(name: str) -> Action:
    """A bot that starts a session (Set-Cookie: JSESSIONID=<name>-<n>) for a request without one, and
    answers `<name> <session id>`."""
    counter = itertools.count(1)

    async def act(request: BotRequest) -> None:
        cookies = dict(
            piece.strip().partition("=")[::2] for piece in request.headers.get("Cookie", "").split(";")
        )
        session = cookies.get("JSESSIONID")
        headers = []
        if not session:
            session = f"{name}-{next(counter)}"
            headers.append(f"Set-Cookie: JSESSIONID={session}; Path=/")
        await request.conn.send(response(f"{name} {session}".encode(), *headers))

    return act


# --- the client side ----------------------------------------------------------------------------------------


def length_of(value: str) -> int:
    """A Content-Length value, leading zeros and all (int() refuses more than 4,300 digits)."""
    return int(value.strip().lstrip("0") or "0")


@dataclass(slots=True)
class RawAnswer:
    """One response off the wire, its head exactly as it came."""

    head: bytes
    status_line: str
    status: int
    headers: CIMultiDict[str]
    body: bytes = b""


async def read_answer(conn: Conn, method: str = "GET") -> RawAnswer:
    """The next response on `conn`, read by its framing (a Content-Length of any number of digits)."""
    head = await wait(conn.reader.readuntil(b"\r\n\r\n"))
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    status = int(status_line.split(" ", 2)[1])
    answer = RawAnswer(head, status_line, status, headers)
    if method == "HEAD" or status < 200 or status in (204, 304):
        return answer
    if "chunked" in headers.get("Transfer-Encoding", ""):
        answer.body = await wait(_dechunk(conn.reader))
    elif "Content-Length" in headers:
        answer.body = await wait(conn.reader.readexactly(length_of(headers["Content-Length"])))
    else:
        answer.body = await wait(conn.reader.read())
    return answer


async def _dechunk(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        parts.append(await reader.readexactly(size))
        assert await reader.readexactly(2) == b"\r\n"
    assert await reader.readuntil(b"\r\n") == b"\r\n"  # the gateway sends no trailers
    return b"".join(parts)


async def trickle(conn: Conn, data: bytes, interval: float) -> None:
    """Send `data` a byte at a time, `interval` seconds apart; stop quietly when the gateway cuts the
    connection."""
    for i in range(len(data)):
        try:
            conn.writer.write(data[i : i + 1])
            await conn.writer.drain()
        except ConnectionError:
            return
        if conn.writer.is_closing():
            return
        await asyncio.sleep(interval)
