# ruff: noqa: F811  (pytest fixtures imported from the helper modules are redefined as parameters)
"""The proxy port tried as an attacker would (issue 16, "The front door"): raw sockets against the gateway,
and a recording raw bot (hostile_helpers.py) that shows byte for byte what reached it. Slow and silent
clients, a full pool, smuggling attempts, broken bots; each with small timeouts so the suite stays fast."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
from typing import Any

import pytest
from conftest import (
    Gateway,
    StartGateway,
    assert_no_errors,
    eventually,
    make_config,
    wait,
)
from frontend_helpers import (  # noqa: F401 - fixtures are used by name
    Conn,
    Connect,
    connect,
    front_connections,
    front_end,
    get,
    only_connection,
    post,
)
from hostile_helpers import (  # noqa: F401 - fixtures are used by name
    Action,
    RawAnswer,
    StartRawBot,
    echo,
    hold,
    ignore_body,
    large,
    late,
    length_of,
    read_answer,
    response,
    send,
    send_and_close,
    sessions,
    silent,
    start_raw_bot,
    then_eof,
    then_stray,
    trickle,
)

from gateway.config import DEFAULT_UPSTREAM_URL, Config
from gateway.metrics import UPSTREAM_ERROR_REASONS

MiB = 1024 * 1024
# Edge timeouts short enough for a fast suite; each test shortens the one it is about.
EDGE = {"header_timeout": 1.0, "body_timeout": 1.0, "keepalive_timeout": 5.0, "send_timeout": 1.0}
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: gw.example\r\n\r\n"
STRAY = b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\nContent-Length: 0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def edge_config(url: str, **sections: dict[str, Any]) -> Config:
    """make_config with the short EDGE timeouts, then the test's own overrides."""
    return make_config(url, **{**sections, "listen": {**EDGE, **sections.get("listen", {})}})


def error_code(answer: RawAnswer) -> str:
    error = json.loads(answer.body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    code: str = error["code"]
    return code


def timeouts(gw: Gateway, phase: str) -> float:
    return gw.metric("session_gateway_client_timeouts_total", phase=phase)


def upstream_errors(gw: Gateway) -> dict[str, float]:
    return {r: gw.metric("session_gateway_upstream_errors_total", reason=r) for r in UPSTREAM_ERROR_REASONS}


NO_UPSTREAM_ERRORS = dict.fromkeys(UPSTREAM_ERROR_REASONS, 0.0)


async def refused_and_closed(conn: Conn, status: int, code: str) -> RawAnswer:
    """The gateway's refusal: the status, the error code, `Connection: close`, then the connection ends."""
    answer = await read_answer(conn)
    assert answer.status_line.startswith(f"HTTP/1.1 {status} ")
    assert error_code(answer) == code
    assert answer.headers.getall("Connection") == ["close"]
    assert await conn.closed_by_server()
    return answer


async def healthy(gw: Gateway, connect: Connect) -> None:
    """The gateway still serves a fresh connection."""
    conn = await connect(gw.port)
    await conn.send(get("/healthy"))
    answer = await read_answer(conn)
    assert (answer.status, answer.body) == (200, b"GET /healthy ")


def head_of(target: str, framing: str, *extra: str) -> bytes:
    """A POST head for a 10-byte body, framed by Content-Length or chunked."""
    frame = "Content-Length: 10" if framing == "content-length" else "Transfer-Encoding: chunked"
    return "".join(
        [f"POST {target} HTTP/1.1\r\nHost: gw.example\r\n{frame}\r\n", *(f"{h}\r\n" for h in extra), "\r\n"]
    ).encode()


def framed(body: bytes, framing: str) -> bytes:
    return body if framing == "content-length" else b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)


FRAMINGS = ["content-length", "chunked"]


# --- 1. slowloris -------------------------------------------------------------------------------------------


async def test_slowloris_head_gets_408_counted_from_its_first_byte_not_restarted_by_each(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url, listen={"header_timeout": 0.5}))
    conn = await connect(gw.port)
    loop = asyncio.get_running_loop()
    head = get("/slow", "X-Pad: " + "a" * 500)[:-2]  # never complete: its blank line is never sent
    started = loop.time()
    trickler = asyncio.create_task(trickle(conn, head, 0.02))  # a byte every 20 ms, for ~10 s
    try:
        answer = await read_answer(conn)
        elapsed = loop.time() - started
        assert not trickler.done()  # cut while the client was still sending, a byte every 20 ms
    finally:
        trickler.cancel()

    assert answer.status_line == "HTTP/1.1 408 Request Timeout"
    assert error_code(answer) == "request_timeout"
    assert answer.headers.getall("Connection") == ["close"]
    assert await conn.closed_by_server()
    assert 0.3 < elapsed < 2.0  # header_timeout (0.5 s) from the first byte, give or take the watcher's tick
    assert timeouts(gw, "header") == 1
    assert bot.received == b""
    assert_no_errors(caplog)


async def test_a_head_is_timed_from_its_first_byte_not_from_the_connection_or_the_last_answer(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Idle time before a head is keep-alive time: a head that starts late and arrives within header_timeout
    of its first byte is served, on a new connection and after an answer alike."""
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url, listen={"header_timeout": 0.5}))
    conn = await connect(gw.port)
    for target in ("/late", "/later"):
        await asyncio.sleep(0.4)  # idle: most of header_timeout, before the first byte
        await trickle(conn, get(target), 0.005)  # the head itself takes ~0.2 s
        answer = await read_answer(conn)
        assert (answer.status, answer.body) == (200, f"GET {target} ".encode())
    assert timeouts(gw, "header") == 0
    assert bot.targets == ["/late", "/later"]
    assert_no_errors(caplog)


# --- 2. slow uploaders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_slow_uploader_holds_no_bot_connection_and_its_body_arrives_whole(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    framing: str,
) -> None:
    """pool_size = 1: while one client trickles its body, another is served (a slow uploader holding the one
    bot connection would make it wait out queue_timeout and get 503)."""
    bot = await start_raw_bot()
    config = edge_config(bot.url, upstream={"pool_size": 1, "queue_timeout": 0.3})
    gw = await start_gateway(config)
    body = b"0123456789"
    uploader = await connect(gw.port)
    await uploader.send(head_of("/slow", framing))
    trickler = asyncio.create_task(trickle(uploader, framed(body, framing), 0.05))
    try:
        await asyncio.sleep(0.15)  # a few bytes of the body are in
        other = await connect(gw.port)
        await other.send(get("/fast"))
        fast = await read_answer(other)
        assert (fast.status, fast.body) == (200, b"GET /fast ")
        assert not trickler.done()  # served while the upload was still trickling
        await wait(trickler)
    finally:
        trickler.cancel()
    slow = await read_answer(uploader)

    assert (slow.status, slow.body) == (200, b"POST /slow " + body)
    assert bot.targets == ["/fast", "/slow"]  # the upload reached the bot only once it was whole
    upload = bot.requests[1]
    assert upload.raw.startswith(b"POST /slow HTTP/1.1\r\n")
    assert upload.raw.endswith(b"\r\n\r\n" + body)  # sent with its length in one piece, even if chunked
    assert upload.headers.getall("Content-Length") == ["10"]
    assert "Transfer-Encoding" not in upload.headers
    assert_no_errors(caplog)


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_stalled_body_gets_408_and_never_reaches_the_bot(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    framing: str,
) -> None:
    bot = await start_raw_bot()
    config = edge_config(
        bot.url, listen={"body_timeout": 0.5}, upstream={"pool_size": 1, "queue_timeout": 0.3}
    )
    gw = await start_gateway(config)
    stalled = await connect(gw.port)
    await stalled.send(head_of("/stalled", framing) + framed(b"0123456789", framing)[:4])
    loop = asyncio.get_running_loop()
    last_byte = loop.time()
    other = await connect(gw.port)
    await other.send(get("/fast"))
    assert (await read_answer(other)).status == 200  # the stalled upload holds no bot connection

    await refused_and_closed(stalled, 408, "request_timeout")
    assert loop.time() - last_byte > 0.3  # body_timeout of silence (0.5 s), give or take a tick
    assert timeouts(gw, "body") == 1
    assert bot.targets == ["/fast"]
    assert b"/stalled" not in bot.received
    await other.send(get("/after"))
    assert (await read_answer(other)).body == b"GET /after "
    assert_no_errors(caplog)


async def test_bot_that_never_reads_a_streamed_upload_is_timed_out_with_504(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bot reads the head of a streamed upload, then neither its body nor answers: while the gateway's
    writes to it are paused, its silence is its own, and read_timeout ends it (both the read and the body
    timeout used to hold off for good, the one for a body still being sent, the other for a paused read)."""
    bot = await start_raw_bot(ignore_body)
    config = edge_config(
        bot.url,
        listen={"body_timeout": 1.0},
        upstream={"buffer_request_body": 64 * 1024, "read_timeout": 1.0},
    )
    gw = await start_gateway(config)
    conn = await connect(gw.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    conn.writer.write(post("/upload", b"x" * (8 * MiB)))  # as fast as the gateway takes it, never drained
    await asyncio.sleep(0.5)
    assert only_connection(gw).body_paused  # more than the kernels' buffers hold: the bot holds it up
    answer = await read_answer(conn)
    assert (answer.status, error_code(answer)) == (504, "upstream_timeout")
    assert loop.time() - started < 3.0  # read_timeout (1 s) after the bot's last sign of life
    assert bot.targets == ["/upload"]
    assert len(bot.received) < 8 * MiB  # the bot read the head alone
    assert_no_errors(caplog)


# --- 3. bounded waiting for a bot connection ------------------------------------------------------------------


async def test_request_without_a_bot_connection_within_queue_timeout_gets_503_upstream_busy(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    bot = await start_raw_bot(hold(release))
    gw = await start_gateway(edge_config(bot.url, upstream={"pool_size": 1, "queue_timeout": 0.3}))
    holder = await connect(gw.port)
    await holder.send(get("/held"))
    await eventually(lambda: bot.targets == ["/held"])

    waiting = await connect(gw.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await waiting.send(get("/waits"))
    busy = await read_answer(waiting)
    assert busy.status_line == "HTTP/1.1 503 Service Unavailable"
    assert error_code(busy) == "upstream_busy"
    assert int(busy.headers["Retry-After"]) >= 1
    assert 0.2 < loop.time() - started < 2.0  # queue_timeout (0.3 s), not forever
    assert gw.metric("session_gateway_upstream_up", replica="default") == 1  # a full pool is no bot failure
    assert upstream_errors(gw) == NO_UPSTREAM_ERRORS
    assert bot.targets == ["/held"]

    release.set()
    held = await read_answer(holder)
    assert (held.status, held.body) == (200, b"GET /held ")
    await waiting.send(get("/later"))  # the refused client's connection is still good
    assert (await read_answer(waiting)).body == b"GET /later "
    assert gw.metric("session_gateway_upstream_queue_seconds_count") >= 2
    assert_no_errors(caplog)


async def test_max_inflight_sheds_load_with_503_upstream_busy_at_once(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    bot = await start_raw_bot(hold(release))
    gw = await start_gateway(
        edge_config(bot.url, listen={"max_inflight": 1}, upstream={"queue_timeout": 5.0})
    )
    holder = await connect(gw.port)
    await holder.send(get("/held"))
    await eventually(lambda: bot.targets == ["/held"])

    shed = await connect(gw.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await shed.send(get("/shed"))
    busy = await read_answer(shed)
    assert (busy.status, error_code(busy)) == (503, "upstream_busy")
    assert "Retry-After" in busy.headers
    assert loop.time() - started < 2.0  # at once, not after queue_timeout (5 s)
    release.set()
    assert (await read_answer(holder)).status == 200
    await shed.send(get("/after"))
    assert (await read_answer(shed)).body == b"GET /after "
    assert bot.targets == ["/held", "/after"]
    assert gw.metric("session_gateway_upstream_up", replica="default") == 1
    assert_no_errors(caplog)


async def test_clients_resetting_behind_a_pipelined_request_leave_max_inflight_free(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client pipelines /b behind /a, then resets. The reset is seen when /a's answer is written: /b
    must not start then (its task, cancelled before it ran, used to keep its place in front.inflight, until
    max_inflight was used up by nobody and every request got 503)."""
    bot = await start_raw_bot(default=late(0.3))
    gw = await start_gateway(edge_config(bot.url, listen={"max_inflight": 2}))
    front = front_end(gw)
    for _ in range(3):
        conn = await connect(gw.port)
        await conn.send(get("/a"))
        await asyncio.sleep(0.05)  # /a is being served: the bot answers it 0.3 s after it arrived
        await conn.send(get("/b"))
        await asyncio.sleep(0.05)
        await conn.reset()
        await eventually(lambda: front.inflight == 0 and front_connections(gw) == 0, timeout=2)

    fresh = await connect(gw.port)
    await fresh.send(get("/fresh"))
    answer = await read_answer(fresh)
    assert (answer.status, answer.body) == (200, b"GET /fresh ")
    assert bot.targets == ["/a", "/a", "/a", "/fresh"]  # never /b
    assert b"/b" not in bot.received
    assert_no_errors(caplog)


# --- 4. clients that never read -------------------------------------------------------------------------------


async def test_client_that_never_reads_is_cut_after_send_timeout_and_its_bot_connection_closed(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_raw_bot(large(32 * MiB))
    gw = await start_gateway(edge_config(bot.url, listen={"send_timeout": 0.5}, upstream={"pool_size": 1}))
    reader = await connect(gw.port, rcvbuf=16 * 1024)
    await reader.send(get("/big"))  # and never reads a byte of the answer

    await eventually(lambda: timeouts(gw, "send") == 1, timeout=10, what="a send timeout")
    big = bot.requests[0].conn
    await wait(big.closed.wait())  # the bot's connection was closed, not returned to the pool
    assert big.sent < 32 * MiB  # the bot was stopped mid-body

    other = await connect(gw.port)
    await other.send(get("/small"))
    small = await read_answer(other)
    assert (small.status, small.body) == (200, b"GET /small ")
    assert bot.requests[1].conn is not big
    await eventually(lambda: gw.metric("session_gateway_connections_open") == 1)  # the non-reader is gone
    assert gw.metric("session_gateway_upstream_up", replica="default") == 1
    assert_no_errors(caplog)


async def test_client_leaving_while_the_bot_is_silent_closes_its_bot_connection_and_marks_nothing_down(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client's disconnect is no bot failure: the abandoned bot connection is closed (the bot sees it),
    the replica stays up, and the next request is served on a new connection."""
    bot = await start_raw_bot(silent)
    gw = await start_gateway(edge_config(bot.url, upstream={"pool_size": 1}))
    leaving = await connect(gw.port)
    await leaving.send(get("/never-answered"))
    await eventually(lambda: bot.targets == ["/never-answered"])
    await leaving.close()

    abandoned = bot.requests[0].conn
    await wait(abandoned.closed.wait())
    await eventually(lambda: gw.metric("session_gateway_client_disconnects_total") == 1)
    await healthy(gw, connect)
    assert bot.requests[1].conn is not abandoned
    assert gw.metric("session_gateway_upstream_up", replica="default") == 1
    assert upstream_errors(gw) == NO_UPSTREAM_ERRORS
    assert_no_errors(caplog)


@pytest.mark.parametrize("last", ["idle", "connection-close"])
async def test_client_that_stops_reading_below_the_high_water_mark_is_cut_after_send_timeout(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    last: str,
) -> None:
    """Under 32 KiB queued, pause_writing never fires: the last answer left unread is cut send_timeout after
    the connection starts closing (after keepalive_timeout idle, or after a `Connection: close` answer),
    each timeout counted once. It used to stay open for good, a keep-alive timeout counted every tick."""
    bot = await start_raw_bot(default=send(response(b"x" * 8000)))
    gw = await start_gateway(edge_config(bot.url, listen={"keepalive_timeout": 0.5, "send_timeout": 0.5}))
    conn = await connect(gw.port, rcvbuf=4096)
    await eventually(lambda: front_connections(gw) == 1)
    transport = only_connection(gw).transport
    assert transport is not None
    # The gateway's kernel buffer kept small (it grows to megabytes on loopback), so that a few answers fill
    # it and the next ones wait in the transport, as behind a slow network.
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for n in range(50):  # pipelined, never read, one at a time: until the transport holds an answer's worth
        await conn.send(get(f"/{n}"))
        await asyncio.sleep(0.02)
        if transport.get_write_buffer_size() > 8192:
            break
    if last == "connection-close":
        await conn.send(get("/last", "Connection: close"))
        await eventually(lambda: bot.targets[-1] == "/last")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(0.05)  # the last answer is written
    assert 0 < transport.get_write_buffer_size() < 32 * 1024
    assert only_connection(gw).send_since == 0  # below the high-water mark: writing never paused

    await eventually(lambda: front_connections(gw) == 0, timeout=2.5, what="the connection cut")
    elapsed = loop.time() - started
    if last == "idle":
        assert 0.7 < elapsed < 2.0  # keepalive_timeout, then send_timeout (0.5 s each), give or take ticks
        assert timeouts(gw, "keepalive") == 1
    else:
        assert 0.3 < elapsed < 1.5  # send_timeout (0.5 s), give or take ticks
        assert timeouts(gw, "keepalive") == 0
    assert timeouts(gw, "send") == 1
    assert_no_errors(caplog)


# --- 5. idle keep-alive connections ---------------------------------------------------------------------------


async def test_idle_keepalive_connections_are_closed_quietly_after_keepalive_timeout(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url, listen={"keepalive_timeout": 0.3, "header_timeout": 0.6}))
    used = await connect(gw.port)
    await used.send(get("/once"))
    assert (await read_answer(used)).status == 200
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    never_used = await connect(gw.port)

    assert await used.closed_by_server()  # EOF, and not a byte before it (no 408)
    assert loop.time() - idle_since > 0.15  # after keepalive_timeout, give or take a tick; not at once
    assert timeouts(gw, "keepalive") == 1
    # A connection that never sent a byte waits for its first head: header_timeout, closed quietly too
    # (as nginx's client_header_timeout), not held for keepalive_timeout.
    assert await never_used.closed_by_server()
    assert loop.time() - idle_since > 0.4
    assert timeouts(gw, "header") == 1
    await eventually(lambda: gw.metric("session_gateway_connections_open") == 0)
    assert bot.targets == ["/once"]
    assert_no_errors(caplog)


# --- 6. max_connections ---------------------------------------------------------------------------------------


async def test_connections_past_max_connections_get_503_and_existing_ones_keep_working(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url, listen={"max_connections": 2}))
    first, second = await connect(gw.port), await connect(gw.port)
    for conn in (first, second):  # both accepted (and counted) before the third arrives
        await conn.send(get("/in"))
        assert (await read_answer(conn)).status == 200

    third = await connect(gw.port)
    refused = await read_answer(third)
    assert refused.status_line == "HTTP/1.1 503 Service Unavailable"
    assert error_code(refused) == "too_many_connections"
    assert int(refused.headers["Retry-After"]) >= 1
    assert await third.closed_by_server()
    assert gw.metric("session_gateway_connections_rejected_total") == 1
    assert gw.metric("session_gateway_connections_open") == 2

    for conn in (first, second):  # existing conversations are unaffected
        await conn.send(get("/still"))
        assert (await read_answer(conn)).body == b"GET /still "
    await first.close()
    await eventually(lambda: gw.metric("session_gateway_connections_open") == 1)
    fourth = await connect(gw.port)
    await fourth.send(get("/room-again"))
    assert (await read_answer(fourth)).body == b"GET /room-again "
    assert bot.targets == ["/in", "/in", "/still", "/still", "/room-again"]
    assert_no_errors(caplog)


# --- 7. an upgrade request with a body ----------------------------------------------------------------------


def websocket_handshake(cookie: str, body_framing: str) -> bytes:
    head = get(
        "/ws",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: c2l4dGVlbiBieXRlIGtleQ==",
        "Sec-WebSocket-Version: 13",
        f"Cookie: {cookie}",
        "Content-Length: 1" if body_framing == "content-length" else "Transfer-Encoding: chunked",
    )
    return head + (b"x" if body_framing == "content-length" else b"1\r\nx\r\n0\r\n\r\n")


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_websocket_handshake_with_a_body_is_400_and_moves_no_session(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    framing: str,
) -> None:
    bots = {name: await start_raw_bot(default=sessions(name)) for name in ("a", "b")}
    urls = tuple(f"{name}={bot.url}" for name, bot in bots.items())
    gw = await start_gateway(edge_config(DEFAULT_UPSTREAM_URL, upstream={"urls": urls}))
    conn = await connect(gw.port)
    conversations = []  # (bot name, session id, the cookie the client sends)
    for _ in range(4):
        await conn.send(get("/start"))
        started = await read_answer(conn)
        name, session = started.body.decode().split()
        cookie = f"JSESSIONID={session}; {started.headers['X-Gateway-Session']}"
        conversations.append((name, session, cookie))
    assert {name for name, _, _ in conversations} == {"a", "b"}
    received = {name: len(bot.received) for name, bot in bots.items()}

    attacker = await connect(gw.port)
    await attacker.send(websocket_handshake(conversations[0][2], framing))
    await refused_and_closed(attacker, 400, "bad_request")

    assert {name: len(bot.received) for name, bot in bots.items()} == received  # the bots received nothing
    for name in bots:
        assert gw.metric("session_gateway_upstream_up", replica=name) == 1
    for name, session, cookie in conversations:  # every conversation stays where it was
        await conn.send(get("/next", f"Cookie: {cookie}"))
        answer = await read_answer(conn)
        assert (answer.status, answer.body) == (200, f"{name} {session}".encode())
        assert answer.headers["X-Session-Id"] == session
        assert "X-Session-New" not in answer.headers
    assert gw.metric("session_gateway_sessions_started_total", reason="upstream") == 0
    assert_no_errors(caplog)


# --- 8. pool poisoning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["100ms-later", "same-write"])
async def test_stray_bytes_from_the_bot_never_reach_the_next_clients_response(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    when: str,
) -> None:
    first_answer = response(b"first")
    poison = then_stray(first_answer, STRAY, 0.1) if when == "100ms-later" else send(first_answer + STRAY)
    bot = await start_raw_bot(poison)
    gw = await start_gateway(edge_config(bot.url, upstream={"pool_size": 1}))
    victim_a = await connect(gw.port)
    await victim_a.send(get("/first"))
    answer = await read_answer(victim_a)
    assert (answer.status, answer.body) == (200, b"first")
    poisoned = bot.requests[0].conn
    await wait(poisoned.closed.wait())  # the gateway closed the connection the stray bytes came on
    assert bytes(poisoned.received) == poisoned.requests[0].raw  # and nothing more was sent on it

    victim_b = await connect(gw.port)
    await victim_b.send(post("/second", b"hello"))
    second = await read_answer(victim_b)
    assert (second.status, second.body) == (200, b"POST /second hello")
    assert "Location" not in second.headers
    assert bot.requests[1].conn is not poisoned
    await victim_a.send(get("/third"))  # and nothing is waiting on the first client's connection either
    third = await read_answer(victim_a)
    assert (third.status, third.body) == (200, b"GET /third ")
    assert bot.targets == ["/first", "/second", "/third"]
    assert_no_errors(caplog)


@pytest.mark.parametrize("delay", [0.0, 0.1], ids=["with-the-answer", "100ms-later"])
async def test_eof_on_an_idle_pooled_connection_is_not_reused(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    delay: float,
) -> None:
    bot = await start_raw_bot(then_eof(response(b"first"), delay))
    gw = await start_gateway(edge_config(bot.url, upstream={"pool_size": 1}))
    conn = await connect(gw.port)
    await conn.send(get("/first"))
    assert (await read_answer(conn)).body == b"first"
    ended = bot.requests[0].conn
    await wait(ended.closed.wait())

    await conn.send(post("/second", b"not idempotent: never retried"))  # so a reused dead connection shows
    second = await read_answer(conn)
    assert (second.status, second.body) == (200, b"POST /second not idempotent: never retried")
    assert bot.targets == ["/first", "/second"]  # sent once
    assert bot.requests[1].conn is not ended
    assert upstream_errors(gw) == NO_UPSTREAM_ERRORS
    assert_no_errors(caplog)


# --- 9. CONNECT and TRACE -------------------------------------------------------------------------------------

CONNECTS = {
    "body-by-content-length": b"CONNECT bot.example:443 HTTP/1.1\r\nHost: bot.example:443\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
    + SMUGGLED,
    "tunnel-bytes": b"CONNECT bot.example:443 HTTP/1.1\r\nHost: bot.example:443\r\n\r\n" + SMUGGLED,
    "chunked-body": b"CONNECT bot.example:443 HTTP/1.1\r\nHost: bot.example:443\r\nTransfer-Encoding: chunked"
    + b"\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
}


@pytest.mark.parametrize("raw", list(CONNECTS.values()), ids=list(CONNECTS))
async def test_connect_with_a_body_is_405_and_closed_and_its_body_never_reaches_the_bot(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    attacker = await connect(gw.port)
    await attacker.send(raw)
    await refused_and_closed(attacker, 405, "method_not_allowed")
    await healthy(gw, connect)
    assert b"smuggled" not in bot.received
    assert bot.targets == ["/healthy"]
    assert_no_errors(caplog)


async def test_trace_is_405_and_not_forwarded(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(b"TRACE /trace HTTP/1.1\r\nHost: gw.example\r\nMax-Forwards: 5\r\n\r\n")
    answer = await read_answer(conn)
    assert answer.status_line.startswith("HTTP/1.1 405 ")
    assert error_code(answer) == "method_not_allowed"
    await healthy(gw, connect)
    assert bot.targets == ["/healthy"]
    assert b"TRACE" not in bot.received
    assert_no_errors(caplog)


# --- 10. protocol versions ------------------------------------------------------------------------------------

VERSIONS = {  # the request, and the statuses it may get: 505 for a version, 400 where there is none to judge
    "HTTP/2.0": (b"GET /v HTTP/2.0\r\nHost: gw.example\r\n\r\n", {505}),
    "HTTP/0.9": (b"GET /v HTTP/0.9\r\nHost: gw.example\r\n\r\n", {505}),
    "HTTP/1.2": (b"GET /v HTTP/1.2\r\nHost: gw.example\r\n\r\n", {505}),  # llhttp: "Invalid HTTP version"
    "HTTP/3.0": (b"GET /v HTTP/3.0\r\nHost: gw.example\r\n\r\n", {505}),
    "no-version": (b"GET /v\r\n\r\n", {400, 505}),
    "h2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400, 505}),
}


@pytest.mark.parametrize(("raw", "statuses"), list(VERSIONS.values()), ids=list(VERSIONS))
async def test_only_http_1_0_and_1_1_are_served_and_the_status_line_says_http_1_1(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    statuses: set[int],
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(raw)
    answer = await read_answer(conn)
    assert answer.status_line.startswith("HTTP/1.1 ")  # never an echo of the request's version
    assert answer.status in statuses
    assert error_code(answer) == {400: "bad_request", 505: "http_version_not_supported"}[answer.status]
    assert await conn.closed_by_server()
    assert bot.received == b""
    assert_no_errors(caplog)


# --- 11. any bytes in a session value ---------------------------------------------------------------------------

SESSION_BYTES = {
    "cookie-xff": b"Cookie: JSESSIONID=\xff",
    "cookie-invalid-utf8": b"Cookie: JSESSIONID=ab\xc3\x28cd",
    "cookie-utf8-non-ascii": b"Cookie: JSESSIONID=caf\xc3\xa9",
    "cookie-xff-among-others": b"Cookie: a=1; JSESSIONID=\x80\xff; b=2",
    "header-xff": b"X-Teneo-Session: JSESSIONID=\xff",
    "header-bare-xff": b"X-Teneo-Session: \xff",
    "header-utf8-non-ascii": b"X-Teneo-Session: JSESSIONID=caf\xc3\xa9",
}


@pytest.mark.parametrize("field", list(SESSION_BYTES.values()), ids=list(SESSION_BYTES))
async def test_non_utf8_session_value_is_400_bad_session_header_never_500(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    field: bytes,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(b"GET /chat HTTP/1.1\r\nHost: gw.example\r\n" + field + b"\r\n\r\n")
    answer = await read_answer(conn)
    assert answer.status == 400
    assert error_code(answer) == "bad_session_header"
    assert bot.received == b""
    await conn.send(get("/chat"))  # a client error, not a broken connection
    assert (await read_answer(conn)).body == b"GET /chat "
    assert_no_errors(caplog)


async def test_non_utf8_session_path_parameter_is_400_never_500(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(b"GET /chat;jsessionid=\xff HTTP/1.1\r\nHost: gw.example\r\n\r\n")
    answer = await read_answer(conn)
    assert answer.status == 400
    assert error_code(answer) in ("bad_session_header", "bad_request")
    assert bot.received == b""
    assert_no_errors(caplog)


# --- 12. Content-Length with thousands of leading zeros -------------------------------------------------------

ZEROS = "0" * 5000  # past the 4,300 digits int() accepts


async def test_client_content_length_with_thousands_of_leading_zeros_is_served(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    zeros = f"POST /zeros HTTP/1.1\r\nHost: gw.example\r\nContent-Length: {ZEROS}3\r\n\r\nabc".encode()
    await conn.send(zeros + get("/next"))  # and a request pipelined behind it is framed right
    first = await read_answer(conn)
    assert (first.status, first.body) == (200, b"POST /zeros abc")
    assert (await read_answer(conn)).body == b"GET /next "
    forwarded = bot.requests[0]
    assert forwarded.headers.getall("Content-Length") == ["3"]  # a sane length for the bot
    assert forwarded.body == b"abc"
    assert bot.targets == ["/zeros", "/next"]
    assert_no_errors(caplog)


@pytest.mark.parametrize("size", [3, 100_000], ids=["whole", "streamed"])
async def test_bot_content_length_with_thousands_of_leading_zeros_is_forwarded_or_502(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    size: int,
) -> None:
    body = bytes(i % 251 for i in range(size))
    bot = await start_raw_bot(
        send(f"HTTP/1.1 200 OK\r\nContent-Length: {ZEROS}{size}\r\n\r\n".encode() + body)
    )
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(get("/zeros"))
    answer = await read_answer(conn)
    assert answer.status in (200, 502)  # at worst the bot's answer is refused: never a 500
    if answer.status == 200:
        assert answer.body == body
        (length,) = answer.headers.getall("Content-Length")
        # A sane length for the client, as nginx rewrites it: (characters, value); not 5,000 zeros passed on.
        assert (len(length), length_of(length)) == (len(str(size)), size)
    else:
        assert error_code(answer) == "upstream_unavailable"
    await conn.send(get("/next"))
    assert (await read_answer(conn)).body == b"GET /next "
    assert_no_errors(caplog)


# --- 13. a 101 to a plain request ---------------------------------------------------------------------------

SWITCHES = {
    "websocket": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "bare": b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    "with-bytes-after": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    + STRAY,
}


@pytest.mark.parametrize("raw", list(SWITCHES.values()), ids=list(SWITCHES))
async def test_bot_answering_101_to_a_plain_request_is_502_without_a_traceback(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    bot = await start_raw_bot(send(raw))
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(get("/plain"))
    answer = await read_answer(conn)
    assert answer.status == 502
    assert error_code(answer) == "upstream_unavailable"
    switched = bot.requests[0].conn
    await wait(switched.closed.wait())  # never pooled
    await conn.send(get("/next"))
    assert (await read_answer(conn)).body == b"GET /next "
    assert bot.requests[1].conn is not switched
    assert gw.metric("session_gateway_upstream_errors_total", reason="protocol") == 1
    assert gw.metric("session_gateway_upstream_up", replica="default") == 1
    assert_no_errors(caplog)


# --- 14. what held must keep holding ------------------------------------------------------------------------


def _post(*fields: str, body: bytes = b"") -> bytes:
    return (
        "POST /r HTTP/1.1\r\nHost: gw.example\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n"
    ).encode() + body


REFUSED = {
    "cl-te": _post("Content-Length: 6", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    "te-cl": _post("Transfer-Encoding: chunked", "Content-Length: 6", body=b"0\r\n\r\n"),
    "duplicate-cl": _post("Content-Length: 3", "Content-Length: 3", body=b"abc"),
    "differing-cl": _post("Content-Length: 3", "Content-Length: 44", body=b"abc"),
    "cl-list": _post("Content-Length: 3, 3", body=b"abc"),
    "cl-signed": _post("Content-Length: +3", body=b"abc"),
    "te-not-final-chunked": _post("Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"),
    "te-unknown": _post("Transfer-Encoding: xchunked", body=b"0\r\n\r\n"),
    "obs-fold": b"GET /r HTTP/1.1\r\nHost: gw.example\r\nX-Folded: a\r\n b\r\n\r\n",
    "obs-fold-te": _post("Transfer-Encoding:", " chunked", body=b"0\r\n\r\n"),
    "bare-lf": b"GET /r HTTP/1.1\nHost: gw.example\n\n",
    "bare-lf-in-a-field": b"GET /r HTTP/1.1\r\nHost: gw.example\nX-A: b\r\n\r\n",
    "bare-cr-in-a-value": b"GET /r HTTP/1.1\r\nHost: gw.example\r\nX-A: a\rb\r\n\r\n",
    "nul-in-a-value": b"GET /r HTTP/1.1\r\nHost: gw.example\r\nX-A: a\x00b\r\n\r\n",
    "space-before-colon": b"GET /r HTTP/1.1\r\nHost : gw.example\r\n\r\n",
    "bad-chunk-size": _post("Transfer-Encoding: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"),
    "chunk-size-overflow": _post(
        "Transfer-Encoding: chunked", body=b"1" + b"0" * 20 + b"\r\nabc\r\n0\r\n\r\n"
    ),
    "negative-chunk-size": _post("Transfer-Encoding: chunked", body=b"-3\r\nabc\r\n0\r\n\r\n"),
    "chunk-without-crlf": _post("Transfer-Encoding: chunked", body=b"3\r\nabcX0\r\n\r\n"),
    "chunked-trailers": _post("Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\nX-Trailer: evil\r\n\r\n"),
}


@pytest.mark.parametrize("raw", list(REFUSED.values()), ids=list(REFUSED))
async def test_ambiguous_framing_is_refused_with_400_and_nothing_reaches_the_bot(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(raw + SMUGGLED)
    await refused_and_closed(conn, 400, "bad_request")
    assert bot.received == b""  # neither the request nor what follows it
    await healthy(gw, connect)
    assert_no_errors(caplog)


BAD_BOT_FRAMING = {  # the bot's answer, and what the client gets: 502, or the answer cut short
    "cl-and-te": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "502",
    ),
    "two-lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "502"),
    "nul-in-a-value": (b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 3\r\n\r\nabc", "502"),
    "bad-chunk-size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", "cut"),
    "longer-than-declared": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc" + STRAY, "200 abc"),
}


@pytest.mark.parametrize(("raw", "outcome"), list(BAD_BOT_FRAMING.values()), ids=list(BAD_BOT_FRAMING))
async def test_bad_bot_framing_never_reuses_the_connection(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    outcome: str,
) -> None:
    bot = await start_raw_bot(send(raw))
    gw = await start_gateway(edge_config(bot.url, upstream={"pool_size": 1}))
    first = await connect(gw.port)
    await first.send(get("/first", "Connection: close"))
    got = await wait(first.reader.read())  # everything until the gateway closes
    if outcome == "502":
        assert got.startswith(b"HTTP/1.1 502 ")
        assert b'"upstream_unavailable"' in got
    elif outcome == "cut":
        assert got.startswith(b"HTTP/1.1 200 ") or got.startswith(b"HTTP/1.1 502 ")
        assert not got.endswith(b"\r\n0\r\n\r\n")  # never presented as a complete body
    else:
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nabc")
    distrusted = bot.requests[0].conn
    await wait(distrusted.closed.wait())

    second = await connect(gw.port)
    await second.send(post("/second", b"payload"))
    answer = await read_answer(second)
    assert (answer.status, answer.body) == (200, b"POST /second payload")
    assert bot.requests[1].conn is not distrusted
    assert b"evil" not in answer.head
    assert_no_errors(caplog)


SECRETS = ("SECRETCOOKIE0001", "SECRETPATH0002", "SECRETHEADER0003", "SECRETBOT0004", "SECRETBAD0005")


async def test_no_session_id_reaches_the_logs(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Session ids in every carrier, a bot-issued one, a refused one, a timed-out and a failed request:
    none appears in any log record, its message or its extra fields."""
    caplog.set_level(logging.DEBUG)
    bot = await start_raw_bot(
        echo,
        echo,
        echo,
        send(response(b"new", "Set-Cookie: JSESSIONID=SECRETBOT0004; Path=/")),
        send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    )
    gw = await start_gateway(edge_config(bot.url, listen={"header_timeout": 0.3}))
    conn = await connect(gw.port)
    for request in (
        get("/chat", "Cookie: JSESSIONID=SECRETCOOKIE0001"),
        get("/chat;jsessionid=SECRETPATH0002?q=1"),
        get("/chat", "X-Teneo-Session: JSESSIONID=SECRETHEADER0003"),
        get("/chat"),
        get("/chat;jsessionid=SECRETPATH0002"),  # answered 101 by the bot: a 502 and a warning
        get("/chat", "X-Teneo-Session: JSESSIONID=SECRETBAD0005 x"),  # refused: 400
    ):
        await conn.send(request)
        assert (await read_answer(conn)).status in (200, 400, 502)
    slow = await connect(gw.port)
    await slow.send(get("/chat;jsessionid=SECRETPATH0002", "Cookie: JSESSIONID=SECRETCOOKIE0001")[:-2])
    assert (await read_answer(slow)).status == 408

    assert len(caplog.records) > 5  # the access log and the warnings were captured
    for secret in SECRETS:
        assert secret not in caplog.text
        for record in caplog.records:
            assert secret not in repr(vars(record))
    assert_no_errors(caplog)


# --- 15. Expect, HTTP/1.0, pipelining -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [11, 4096], ids=["buffered", "streamed"])
async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    size: int,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url, upstream={"buffer_request_body": 1024}))
    body = bytes(65 + i % 26 for i in range(size))
    conn = await connect(gw.port)
    await conn.send(
        f"POST /ask HTTP/1.1\r\nHost: gw.example\r\nContent-Length: {size}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    assert await wait(conn.reader.readexactly(len(CONTINUE))) == CONTINUE  # and nothing else before the body
    await conn.send(body)
    answer = await read_answer(conn)
    assert (answer.status, answer.body) == (200, b"POST /ask " + body)
    (forwarded,) = bot.requests
    assert forwarded.body == body
    assert "Expect" not in forwarded.headers  # answered by this hop
    assert_no_errors(caplog)


async def test_client_resetting_behind_a_pipelined_expect_100_continue_logs_no_error(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/a is answered into a reset connection: the POST pipelined behind it is not started, so no
    100 Continue is written to the closing transport (it used to raise in /a's task: "Task exception was
    never retrieved ... ConnectionResetError" at ERROR)."""
    bot = await start_raw_bot(default=late(0.3))
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(get("/a"))
    await eventually(lambda: bot.targets == ["/a"])
    await asyncio.sleep(0.05)
    await conn.send(
        b"POST /b HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
    )
    await asyncio.sleep(0.05)
    await conn.reset()

    front = front_end(gw)
    await eventually(lambda: front.inflight == 0 and front_connections(gw) == 0, timeout=2)
    await asyncio.sleep(0.05)  # a task that failed is collected, and logged, by now
    gc.collect()
    await healthy(gw, connect)
    assert bot.targets == ["/a", "/healthy"]
    assert_no_errors(caplog)


HTTP_1_0_ANSWERS = {
    "sized": send(response(b"hello")),
    "chunked": send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
    "close-delimited": send_and_close(b"HTTP/1.1 200 OK\r\n\r\nhello"),
}


@pytest.mark.parametrize("bot_answer", list(HTTP_1_0_ANSWERS.values()), ids=list(HTTP_1_0_ANSWERS))
async def test_http_1_0_request_gets_a_sized_or_close_delimited_answer_never_chunked(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    bot_answer: Action,
) -> None:
    bot = await start_raw_bot(bot_answer)
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(b"GET /old HTTP/1.0\r\nHost: gw.example\r\n\r\n")
    raw = await wait(conn.reader.read())  # HTTP/1.0 without keep-alive: the gateway closes after it
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"chunked" not in head.lower()
    assert body == b"hello"
    if b"\r\nContent-Length:" in head:
        assert b"\r\nContent-Length: 5" in head
    assert bot.targets == ["/old"]
    assert_no_errors(caplog)


async def test_pipelined_requests_are_answered_in_order(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    body = b"GET /not-a-request HTTP/1.1\r\nHost: gw.example\r\n\r\n"  # looks like a request: it is a body
    conn = await connect(gw.port)
    await conn.send(
        get("/one") + post("/two", body) + get("/three").replace(b"GET", b"HEAD", 1) + get("/four")
    )
    answers = [await read_answer(conn, method) for method in ("GET", "POST", "HEAD", "GET")]
    assert [a.status for a in answers] == [200] * 4
    assert [a.body for a in answers] == [b"GET /one ", b"POST /two " + body, b"", b"GET /four "]
    assert answers[2].headers["Content-Length"] == str(len(b"HEAD /three "))
    assert bot.targets == ["/one", "/two", "/three", "/four"]
    await conn.send(get("/five"))  # nothing left over on the connection
    assert (await read_answer(conn)).body == b"GET /five "
    assert_no_errors(caplog)


async def test_a_head_begun_in_the_read_that_ends_a_large_body_is_not_counted_as_that_read(
    start_raw_bot: StartRawBot,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The read that ends a 100 kB body also begins the next head: only reads wholly inside a head count
    toward its size (the whole read used to, and the small head got 431 headers_too_large)."""
    bot = await start_raw_bot()
    gw = await start_gateway(edge_config(bot.url))
    body = b"x" * 100_000
    conn = await connect(gw.port)
    await conn.send(post("/one", body) + b"GET /two HTTP/1.1\r\nHost: gw")
    await asyncio.sleep(0.2)
    await conn.send(b".example\r\n\r\n")
    one = await read_answer(conn)
    assert (one.status, one.body) == (200, b"POST /one " + body)
    two = await read_answer(conn)
    assert (two.status, two.body) == (200, b"GET /two ")
    assert bot.targets == ["/one", "/two"]
    assert_no_errors(caplog)


async def test_requests_already_read_are_answered_at_shutdown(
    start_raw_bot: StartRawBot, start_gateway: StartGateway, connect: Connect
) -> None:
    """SIGTERM's drain: pipelined requests the gateway has read are answered, the last with Connection: close;
    the client is not left with a request it sent and the gateway read but never answered."""
    bot = await start_raw_bot(default=late(0.3))
    gw = await start_gateway(edge_config(bot.url))
    conn = await connect(gw.port)
    await conn.send(get("/a") + get("/b"))
    await eventually(lambda: bot.targets == ["/a"])
    closing = asyncio.create_task(gw.client.server.close())

    first, second = await read_answer(conn), await read_answer(conn)

    assert (first.status, first.headers.getall("Connection", [])) == (200, [])
    assert (second.status, second.headers.getall("Connection", [])) == (200, ["close"])
    assert await conn.closed_by_server()
    assert bot.targets == ["/a", "/b"]
    await wait(closing)
