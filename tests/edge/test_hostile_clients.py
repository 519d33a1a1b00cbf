"""Slow, silent and greedy clients against the proxy port (issue 16): slowloris, slow uploads, a full pool,
non-readers, idle and surplus connections; raw sockets, a recording raw bot, small timeouts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest
from frontend_helpers import Connect, MiB, front_connections, front_end, get, only_connection, post
from gateway_helpers import (
    SpawnGateway,
    StartGateway,
    assert_no_errors,
    eventually,
    wait,
)
from hostile_checks import (
    FRAMINGS,
    NO_UPSTREAM_ERRORS,
    StartEdge,
    edge_config,
    error_code,
    framed,
    head_of,
    healthy,
    refused_and_closed,
    timeouts,
    upstream_errors,
)
from hostile_helpers import (
    StartRawBot,
    hold,
    ignore_body,
    large,
    late,
    read_answer,
    response,
    send,
    silent,
    trickle,
)

from gateway.edge.front_reader import MAX_AHEAD

# --- 1. slowloris -------------------------------------------------------------------------------------------


async def test_slowloris_head_gets_408_counted_from_its_first_byte_not_restarted_by_each(
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, gw = await start_edge(listen={"header_timeout": 0.5})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Idle time before a head is keep-alive time: a head that starts late and arrives within header_timeout
    of its first byte is served, on a new connection and after an answer alike."""
    bot, gw = await start_edge(listen={"header_timeout": 0.5})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    bot, gw = await start_edge(hold(release), upstream={"pool_size": 1, "queue_timeout": 0.3})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    bot, gw = await start_edge(hold(release), listen={"max_inflight": 1}, upstream={"queue_timeout": 5.0})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client pipelines /b behind /a, then resets. The reset is seen when /a's answer is written: /b
    must not start then (its task, cancelled before it ran, used to keep its place in front.inflight, until
    max_inflight was used up by nobody and every request got 503)."""
    bot, gw = await start_edge(default=late(0.3), listen={"max_inflight": 2})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, gw = await start_edge(large(32 * MiB), listen={"send_timeout": 0.5}, upstream={"pool_size": 1})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client's disconnect is no bot failure: the abandoned bot connection is closed (the bot sees it),
    the replica stays up, and the next request is served on a new connection."""
    bot, gw = await start_edge(silent, upstream={"pool_size": 1})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    last: str,
) -> None:
    """Under 32 KiB queued, pause_writing never fires: the last answer left unread is cut send_timeout after
    the connection starts closing (after keepalive_timeout idle, or after a `Connection: close` answer),
    each timeout counted once. It used to stay open for good, a keep-alive timeout counted every tick."""
    bot, gw = await start_edge(
        default=send(response(b"x" * 8000)), listen={"keepalive_timeout": 0.5, "send_timeout": 0.5}
    )
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, gw = await start_edge(listen={"keepalive_timeout": 0.3, "header_timeout": 0.6})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, gw = await start_edge(listen={"max_connections": 2})
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


# --- 7. what a connection may make the gateway hold ------------------------------------------------------


async def test_a_pipeline_deeper_than_max_ahead_is_answered_in_order_then_refused_with_429(
    start_edge: StartEdge, connect: Connect
) -> None:
    """A parsed request costs ~600 bytes where its bytes may be 26, and one read is parsed whole: 2,000
    pipelined requests in one write made a connection hold megabytes. Past MAX_AHEAD waiting requests the
    next is refused, in its turn, and the connection ends."""
    release = asyncio.Event()
    bot, gw = await start_edge(hold(release))
    conn = await connect(gw.port)
    await conn.send(b"".join(get(f"/p{i}") for i in range(2000)))  # ~90 KB in one write
    await eventually(lambda: bot.targets == ["/p0"], what="the first request at the bot")
    reader = only_connection(gw)
    assert len(reader._queue) <= MAX_AHEAD  # parsed ahead, at most; the rest refused or never read
    release.set()
    answers = [await read_answer(conn)]
    while answers[-1].status == 200:
        answers.append(await read_answer(conn))
    *served, refused = answers
    assert [a.body for a in served] == [f"GET /p{i} ".encode() for i in range(len(served))]
    assert len(served) >= MAX_AHEAD  # as many as were waiting, in order
    assert (refused.status, error_code(refused)) == (429, "too_many_pipelined_requests")
    assert refused.headers["Connection"] == "close" and refused.headers["Retry-After"] == "1"
    assert await conn.closed_by_server()
    assert bot.targets == [f"/p{i}" for i in range(len(served))]


async def test_a_body_in_tiny_chunks_is_held_in_few_pieces_and_arrives_whole(
    start_edge: StartEdge, connect: Connect
) -> None:
    """Buffered whole before serving, a body of 2-byte chunks was one ~50-byte object per piece (28 times
    its size): pieces are joined as they come."""
    bot, gw = await start_edge()
    conn = await connect(gw.port)
    body = bytes(range(256)) * 256  # 64 KiB
    pieces = b"".join(b"2\r\n" + body[i : i + 2] + b"\r\n" for i in range(0, len(body), 2))
    await conn.send(b"POST /tiny HTTP/1.1\r\nHost: gw.example\r\nTransfer-Encoding: chunked\r\n\r\n" + pieces)
    await eventually(lambda: only_connection(gw)._parsing is not None, what="the body being read")
    buffered = only_connection(gw)._parsing
    assert buffered is not None
    await eventually(lambda: buffered.content.received == len(body), what="the whole body read")
    assert len(buffered.content._chunks) <= len(body) // 4096 + 1  # not 32,768 pieces
    await conn.send(b"0\r\n\r\n")
    answer = await read_answer(conn)
    assert (answer.status, answer.body) == (200, b"POST /tiny " + body)
    assert bot.requests[0].headers.getall("Content-Length") == [str(len(body))]


# --- 8. a gateway that was not running ----------------------------------------------------------------------


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_what_clients_sent_while_the_gateway_was_stopped_counts_the_pause_against_no_one(
    event_loop: str, start_raw_bot: StartRawBot, spawn_gateway: SpawnGateway, connect: Connect
) -> None:
    """A process paused longer than its timeouts (SIGSTOP here; a CPU-starved container, a long GC pause)
    must not judge its clients by the time it lost. After a pause the watcher may run before the loop reads
    what was sent meanwhile (a poll whose deadline passed is skipped), and what it reads first is stamped with
    the clock of before the pause: a request sent whole during it was closed unanswered, a head or a body
    still coming got 408 (the fuzz runner saw "closed without answer")."""
    bot = await start_raw_bot()
    timeouts = {f"GATEWAY_LISTEN_{phase}_TIMEOUT": "0.4" for phase in ("HEADER", "BODY", "KEEPALIVE")}
    gw = await spawn_gateway(upstream_url=bot.url, GATEWAY_LISTEN_EVENT_LOOP=event_loop, **timeouts)
    for pause in range(2):
        idle = await connect(gw.port)
        await idle.send(get("/first"))
        assert (await read_answer(idle)).status == 200
        new, head, body = await connect(gw.port), await connect(gw.port), await connect(gw.port)
        await head.send(b"GET /head HTTP/1.1\r\n")
        await body.send(post("/body", b"0123456789")[:-8])
        await asyncio.sleep(0.1)  # all accepted and read so far

        os.kill(gw.proc.pid, signal.SIGSTOP)
        try:
            await new.send(get("/new"))  # whole, on a connection that had said nothing
            await idle.send(get("/again"))  # whole, on an idle keep-alive connection
            await head.send(b"Host: gw.example\r\n")  # a head goes on
            await body.send(b"2345")  # a body goes on
            await asyncio.sleep(1.2)  # three times every timeout
        finally:
            os.kill(gw.proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.05)
        await head.send(b"\r\n")
        await body.send(b"6789")

        for conn, answer in (
            (new, "GET /new "),
            (idle, "GET /again "),
            (head, "GET /head "),
            (body, "POST /body 0123456789"),
        ):
            got = await read_answer(conn)
            assert (got.status, got.body) == (200, answer.encode()), (pause, answer)
    silent = await connect(gw.port)
    assert await silent.closed_by_server()  # a client that says nothing is still closed, as ever
