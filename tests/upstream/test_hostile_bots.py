"""Bots that misbehave (issue 16): stray bytes and EOF on idle pooled connections, odd Content-Length, a 101
to a plain request, bad framing; and no session id in any log line whatever the bot or client sends."""

from __future__ import annotations

import logging

import pytest
from frontend_helpers import Connect, get, post
from gateway_helpers import (
    assert_no_errors,
    wait,
)
from hostile_checks import (
    NO_UPSTREAM_ERRORS,
    STRAY,
    StartEdge,
    error_code,
    upstream_errors,
)
from hostile_helpers import (
    echo,
    length_of,
    read_answer,
    response,
    send,
    send_and_close,
    then_eof,
    then_stray,
)

# --- 8. pool poisoning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["100ms-later", "same-write"])
async def test_stray_bytes_from_the_bot_never_reach_the_next_clients_response(
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    when: str,
) -> None:
    first_answer = response(b"first")
    poison = then_stray(first_answer, STRAY, 0.1) if when == "100ms-later" else send(first_answer + STRAY)
    bot, gw = await start_edge(poison, upstream={"pool_size": 1})
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    delay: float,
) -> None:
    bot, gw = await start_edge(then_eof(response(b"first"), delay), upstream={"pool_size": 1})
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


# --- 12. Content-Length with thousands of leading zeros -------------------------------------------------------

ZEROS = "0" * 5000  # past the 4,300 digits int() accepts


async def test_client_content_length_with_thousands_of_leading_zeros_is_served(
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, gw = await start_edge()
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    size: int,
) -> None:
    body = bytes(i % 251 for i in range(size))
    _, gw = await start_edge(
        send(f"HTTP/1.1 200 OK\r\nContent-Length: {ZEROS}{size}\r\n\r\n".encode() + body)
    )
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    bot, gw = await start_edge(send(raw))
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
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    outcome: str,
) -> None:
    bot, gw = await start_edge(send(raw), upstream={"pool_size": 1})
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


async def test_a_body_whose_last_transfer_coding_is_not_chunked_ends_with_the_connection(
    start_edge: StartEdge, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """`Transfer-Encoding: chunked, gzip`: the body is not chunked (its last coding is not) and ends when the
    bot closes (RFC 9112 §6.3), as llhttp reads it; taken as chunked, the close was a failure and the client
    got a chunked body without its last chunk."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n"
    _, gw = await start_edge(send_and_close(raw))
    conn = await connect(gw.port)
    await conn.send(get("/coded"))
    answer = await read_answer(conn)
    assert (answer.status, answer.body) == (200, b"5\r\nhello\r\n")  # the bytes as they came, whole
    assert upstream_errors(gw) == NO_UPSTREAM_ERRORS
    assert_no_errors(caplog)


SECRETS = ("SECRETCOOKIE0001", "SECRETPATH0002", "SECRETHEADER0003", "SECRETBOT0004", "SECRETBAD0005")


async def test_no_session_id_reaches_the_logs(
    start_edge: StartEdge,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Session ids in every carrier, a bot-issued one, a refused one, a timed-out and a failed request:
    none appears in any log record, its message or its extra fields."""
    caplog.set_level(logging.DEBUG)
    _, gw = await start_edge(
        echo,
        echo,
        echo,
        send(response(b"new", "Set-Cookie: JSESSIONID=SECRETBOT0004; Path=/")),
        send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
        listen={"header_timeout": 0.3},
    )
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
