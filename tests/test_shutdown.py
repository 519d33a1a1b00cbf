"""SIGTERM under load (issue 16): `session-gateway serve` with keep-alive clients busy on it, some answers
streamed. Every request either gets its whole answer or is refused before it was read (its connection
closes with no byte of answer, and the bot never saw it); none is cut mid-answer; the process exits 0
within listen.shutdown_timeout."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from gateway_helpers import LOOPBACK, SpawnGateway, StartUpstream, eventually, wait

from bench.wire import Framing, parse_answer

pytestmark = pytest.mark.slow

SHUTDOWN_TIMEOUT = 5.0
CLIENTS = 16
BEFORE_SIGNAL = 300  # answers completed before SIGTERM: the load is steady by then
MAX_REQUESTS = 40_000  # per run, whatever happens: the loop is bounded
TURN_DELAY = 0.05  # seconds the bot thinks before each answer
PARTS = 5  # a streamed answer's parts, TURN_DELAY apart
_TARGET = re.compile(r"/(turn|stream|upload)/(\d+)")


def expected_body(kind: str, n: int) -> bytes:
    if kind == "stream":
        return b"".join(b"stream %d part %d\n" % (n, i) for i in range(PARTS))
    return b"%s %d " % (kind.encode(), n) + b"x" * 300


@dataclass(slots=True)
class SlowStreamingBot:
    """Answers turns after TURN_DELAY, streams in parts; records the number of each request it read."""

    seen: set[int] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        match = _TARGET.fullmatch(request.path)
        assert match is not None, request.path
        kind, n = match[1], int(match[2])
        body = await request.read()
        assert kind != "upload" or body == b"u" * 1000
        self.seen.add(n)
        await asyncio.sleep(TURN_DELAY)
        if kind != "stream":
            return web.Response(body=expected_body(kind, n))
        response = web.StreamResponse()  # chunked to the gateway, and from it
        await response.prepare(request)
        for part in range(PARTS):
            await response.write(b"stream %d part %d\n" % (n, part))
            await asyncio.sleep(TURN_DELAY)
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@dataclass(slots=True)
class Outcomes:
    completed: int = 0
    completed_across_signal: int = 0  # sent before SIGTERM, answered after it
    refused: list[int] = field(default_factory=list)  # closed with no byte of answer
    cut: list[str] = field(default_factory=list)
    next_request: int = 0
    signalled_at: float = 0.0


def request_bytes(n: int, close: bool) -> tuple[str, bytes]:
    kind = ("turn", "turn", "stream", "upload")[n % 4]
    head = f"Host: gw.example\r\n{'Connection: close' if close else 'User-Agent: load'}\r\n"
    if kind == "upload":
        return kind, f"POST /upload/{n} HTTP/1.1\r\n{head}Content-Length: 1000\r\n\r\n".encode() + b"u" * 1000
    return kind, f"GET /{kind}/{n} HTTP/1.1\r\n{head}\r\n".encode()


async def client(port: int, out: Outcomes, stop: asyncio.Event, close: bool) -> None:
    """Requests one after another, a new connection when one ends (or for each, with `close`), until the
    gateway accepts none."""
    loop = asyncio.get_running_loop()
    while not stop.is_set() and out.next_request < MAX_REQUESTS:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (LOOPBACK, port))
        except OSError:  # the listener is closed: the gateway is draining
            sock.close()
            return
        with contextlib.closing(sock):
            while not stop.is_set() and out.next_request < MAX_REQUESTS:
                n = out.next_request
                out.next_request += 1
                if not await exchange(loop, sock, n, out, close):
                    break


async def exchange(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int, out: Outcomes, close: bool
) -> bool:
    """One request and its answer, judged; True when the connection may carry the next one."""
    kind, data = request_bytes(n, close)
    sent_at = time.monotonic()
    buf, eof = bytearray(), False
    try:
        await loop.sock_sendall(sock, data)
    except OSError:
        eof = True  # closed under us: what (if anything) it sent is still read below
    while True:
        try:
            parsed = parse_answer(buf, eof)
        except Framing as exc:
            out.cut.append(f"request {n} ({kind}): {exc}")
            return False
        if parsed is not None:
            break
        if eof:
            if buf:
                out.cut.append(f"request {n} ({kind}): {bytes(buf[:80])!r}")
            else:
                out.refused.append(n)
            return False
        try:
            chunk = await loop.sock_recv(sock, 65536)
        except ConnectionError:
            chunk = b""
        buf += chunk
        eof = not chunk
    answer, used = parsed
    if answer.status != 200 or answer.body != expected_body(kind, n) or used != len(buf):
        out.cut.append(f"request {n} ({kind}): {answer.status} {answer.body[:80]!r}")
        return False
    out.completed += 1
    if out.signalled_at and sent_at < out.signalled_at:
        out.completed_across_signal += 1
    return not answer.close


async def test_sigterm_under_load_drains_every_read_request_and_cuts_none(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway
) -> None:
    bot = SlowStreamingBot()
    gw = await spawn_gateway(
        "serve",
        upstream_url=await start_upstream(bot.app()),
        GATEWAY_LISTEN_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        GATEWAY_LOG_LEVEL="warning",
    )
    out, stop = Outcomes(), asyncio.Event()
    # Most keep their connection; a few open one per request, so some connect as the listener closes.
    clients = [asyncio.create_task(client(gw.port, out, stop, close=i % 4 == 0)) for i in range(CLIENTS)]
    try:
        await eventually(lambda: out.completed >= BEFORE_SIGNAL, timeout=30, what="a steady load")
        out.signalled_at = time.monotonic()
        gw.terminate()
        code = await gw.exit_code(timeout=SHUTDOWN_TIMEOUT + 2)
        stopped_after = time.monotonic() - out.signalled_at
        await wait(asyncio.gather(*clients), timeout=10)  # every client met a closed gateway
    finally:
        stop.set()
        for task in clients:
            task.cancel()

    print(  # shown with -s
        f"completed {out.completed} ({out.completed_across_signal} across the signal), refused before read "
        f"{len(out.refused)}, cut {len(out.cut)}; exit {code} after {stopped_after:.2f} s"
    )
    assert out.cut == []
    assert code == 0 and stopped_after < SHUTDOWN_TIMEOUT
    assert out.completed_across_signal > 0  # requests in flight at the signal were answered, not dropped
    assert out.completed >= BEFORE_SIGNAL
    refused_yet_read = sorted(set(out.refused) & bot.seen)
    assert refused_yet_read == [], "the bot answered these, yet their clients got nothing"
    stderr = gw.stderr()
    assert "Traceback" not in stderr and '"level": "error"' not in stderr, stderr[-3000:]
