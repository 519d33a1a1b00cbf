"""Requests an attacker crafts (issue 16): upgrades with a body, CONNECT and TRACE, other HTTP versions, any
bytes in a session value, ambiguous framing, Expect, HTTP/1.0 and pipelining; nothing refused reaches the bot."""

from __future__ import annotations

import asyncio
import gc

import pytest
from frontend_helpers import Connect, front_connections, front_end, get, post
from gateway_helpers import (
    StartGateway,
    assert_no_errors,
    eventually,
    wait,
)
from hostile_checks import (
    CONTINUE,
    FRAMINGS,
    SMUGGLED,
    StartEdge,
    edge_config,
    error_code,
    healthy,
    refused_and_closed,
)
from hostile_helpers import (
    Action,
    StartRawBot,
    late,
    read_answer,
    response,
    send,
    send_and_close,
    sessions,
)

from gateway.config import DEFAULT_UPSTREAM_URL

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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    bot, gw = await start_edge()
    attacker = await connect(gw.port)
    await attacker.send(raw)
    await refused_and_closed(attacker, 405, "method_not_allowed")
    await healthy(gw, connect)
    assert b"smuggled" not in bot.received
    assert bot.targets == ["/healthy"]
    assert_no_errors(caplog)


async def test_trace_is_405_and_not_forwarded(
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, gw = await start_edge()
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    statuses: set[int],
) -> None:
    bot, gw = await start_edge()
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    field: bytes,
) -> None:
    bot, gw = await start_edge()
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, gw = await start_edge()
    conn = await connect(gw.port)
    await conn.send(b"GET /chat;jsessionid=\xff HTTP/1.1\r\nHost: gw.example\r\n\r\n")
    answer = await read_answer(conn)
    assert answer.status == 400
    assert error_code(answer) in ("bad_session_header", "bad_request")
    assert bot.received == b""
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    bot, gw = await start_edge()
    conn = await connect(gw.port)
    await conn.send(raw + SMUGGLED)
    await refused_and_closed(conn, 400, "bad_request")
    assert bot.received == b""  # neither the request nor what follows it
    await healthy(gw, connect)
    assert_no_errors(caplog)


# --- 15. Expect, HTTP/1.0, pipelining -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [11, 4096], ids=["buffered", "streamed"])
async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    size: int,
) -> None:
    bot, gw = await start_edge(upstream={"buffer_request_body": 1024})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/a is answered into a reset connection: the POST pipelined behind it is not started, so no
    100 Continue is written to the closing transport (it used to raise in /a's task: "Task exception was
    never retrieved ... ConnectionResetError" at ERROR)."""
    bot, gw = await start_edge(default=late(0.3))
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    bot_answer: Action,
) -> None:
    bot, gw = await start_edge(bot_answer)
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, gw = await start_edge()
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The read that ends a 100 kB body also begins the next head: only reads wholly inside a head count
    toward its size (the whole read used to, and the small head got 431 headers_too_large)."""
    bot, gw = await start_edge()
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
    start_edge: StartEdge, connect: Connect
) -> None:
    """SIGTERM's drain: pipelined requests the gateway has read are answered, the last with Connection: close;
    the client is not left with a request it sent and the gateway read but never answered."""
    bot, gw = await start_edge(default=late(0.3))
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
