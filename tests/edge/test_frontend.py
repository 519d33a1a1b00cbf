"""The proxy port's front end (gateway/edge/frontend.py) over raw loopback sockets: keep-alive, pipelining,
the handoff to aiohttp's server mid-connection, framing of what it writes, and back-pressure."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import logging
import random
import socket
import struct
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from frontend_helpers import Connect, MiB, front_connections, get, handed_over, only_connection, post
from gateway_helpers import (
    Recorder,
    StartGateway,
    StartRawUpstream,
    StartUpstream,
    assert_no_errors,
    closed_url,
    eventually,
    make_config,
    raw_exchange,
    wait,
)

# --- an upstream -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Echo:
    """An upstream answering `<method> <target> <body>`, noting the port of each connection it was asked on."""

    seen: list[tuple[str, str, bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.raw_path, body))
        assert request.transport is not None
        self.ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(body=f"{request.method} {request.raw_path} ".encode() + body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


# --- keep-alive and pipelining --------------------------------------------------------------------------


async def test_fifty_requests_on_one_connection_are_answered_in_order(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    echo = Echo()
    gw = await start_gateway(make_config(await start_upstream(echo.app())))
    conn = await connect(gw.port)
    for i in range(50):
        await conn.send(get(f"/k/{i}?n={i}"))
        answer = await conn.answer()
        assert (answer.version, answer.status) == ("HTTP/1.1", 200)
        assert answer.body == f"GET /k/{i}?n={i} ".encode()
        assert "close" not in answer.headers.get("Connection", "")

    assert [target for _, target, _ in echo.seen] == [f"/k/{i}?n={i}" for i in range(50)]
    assert len(set(echo.ports)) == 1  # one pooled upstream connection, reused 49 times
    assert (front_connections(gw), handed_over(gw)) == (1, 0)  # one connection, still open


async def test_pipelined_get_post_get_in_one_write_answered_in_order(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    echo = Echo()
    gw = await start_gateway(make_config(await start_upstream(echo.app())))
    body = b"hello \x00\xff\r\n\r\nGET /not-a-request HTTP/1.1\r\n\r\n"  # looks like a head: it is body
    conn = await connect(gw.port)
    await conn.send(get("/one") + post("/two", body) + get("/three"))

    answers = [await conn.answer() for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.body for a in answers] == [b"GET /one ", b"POST /two " + body, b"GET /three "]
    assert echo.seen == [("GET", "/one", b""), ("POST", "/two", body), ("GET", "/three", b"")]
    assert (front_connections(gw), handed_over(gw)) == (1, 0)


async def test_pipelined_backlog_past_the_read_buffer_is_served_whole(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    """A client far ahead of a slow first answer: reading pauses (BUFFER_LIMIT) and resumes, nothing lost."""
    release = asyncio.Event()
    sizes: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await wait(release.wait())
        body = await request.read()
        sizes.append(len(body))
        return web.Response(text=f"{request.path} {hashlib.sha256(body).hexdigest()}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    gw = await start_gateway(make_config(await start_upstream(app)))
    bodies = [random.Random(i).randbytes(60 * 1024) for i in range(8)]  # 480 KiB behind the slow one
    conn = await connect(gw.port)
    await conn.send(get("/slow") + b"".join(post(f"/p{i}", body) for i, body in enumerate(bodies)))
    await asyncio.sleep(0.1)  # let the backlog pile up behind /slow
    release.set()

    first = await conn.answer()
    assert first.body.startswith(b"/slow ")
    for i, body in enumerate(bodies):
        answer = await conn.answer()
        assert answer.body == f"/p{i} {hashlib.sha256(body).hexdigest()}".encode()
    assert sizes == [0] + [60 * 1024] * 8
    assert (front_connections(gw), handed_over(gw)) == (1, 0)


async def test_request_sent_one_byte_at_a_time(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    echo = Echo()
    gw = await start_gateway(make_config(await start_upstream(echo.app())))
    conn = await connect(gw.port)
    request = post("/bytes?x=1", b"one\r\ntwo\r\n\r\nthree", "X-Long: " + "v" * 40)
    for i in range(len(request)):
        await conn.send(request[i : i + 1])
        await asyncio.sleep(0.001)  # TCP_NODELAY and a pause: separate segments, separate reads

    answer = await conn.answer()
    assert answer.status == 200
    assert answer.body == b"POST /bytes?x=1 one\r\ntwo\r\n\r\nthree"
    assert echo.seen == [("POST", "/bytes?x=1", b"one\r\ntwo\r\n\r\nthree")]
    # and the connection is still good for the next one
    await conn.send(get("/after"))
    assert (await conn.answer()).body == b"GET /after "
    assert (front_connections(gw), handed_over(gw)) == (1, 0)


# --- HEAD, chunked bodies, WebSocket handshakes --------------------------------------------------------------------


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-by-one", "pipelined"])
async def test_get_head_get_on_one_connection_are_all_served_by_the_front_end(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect, pipelined: bool
) -> None:
    echo = Echo()
    gw = await start_gateway(make_config(await start_upstream(echo.app())))
    conn = await connect(gw.port)
    requests = [get("/a"), get("/b").replace(b"GET", b"HEAD", 1), get("/c")]
    if pipelined:
        await conn.send(b"".join(requests))
    else:
        await conn.send(requests[0])
    first = await conn.answer()
    if not pipelined:
        assert (front_connections(gw), handed_over(gw)) == (1, 0)
        await conn.send(requests[1])
    head = await conn.answer("HEAD")
    if not pipelined:
        await conn.send(requests[2])
    last = await conn.answer()

    assert (first.status, first.body) == (200, b"GET /a ")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(b"HEAD /b "))  # the GET's length, no body
    assert (last.status, last.body) == (200, b"GET /c ")
    assert [(m, t) for m, t, _ in echo.seen] == [("GET", "/a"), ("HEAD", "/b"), ("GET", "/c")]
    assert (front_connections(gw), handed_over(gw)) == (1, 0)  # HEAD goes through the pool too
    # Nothing extra came after the third answer (a HEAD body or a request answered twice).
    await conn.send(get("/d", "Connection: close"))
    assert (await conn.answer()).body == b"GET /d "
    assert await conn.closed_by_server()


async def test_chunked_post_after_a_fast_get_reaches_the_upstream(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    echo = Echo()
    gw = await start_gateway(make_config(await start_upstream(echo.app())))
    conn = await connect(gw.port)
    await conn.send(get("/first"))
    assert (await conn.answer()).body == b"GET /first "

    chunked = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    await conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    answer = await conn.answer()
    assert (answer.status, answer.body) == (200, b"POST /upload hello, world")
    await conn.send(get("/again"))
    assert (await conn.answer()).body == b"GET /again "

    assert echo.seen == [("GET", "/first", b""), ("POST", "/upload", b"hello, world"), ("GET", "/again", b"")]
    assert (front_connections(gw), handed_over(gw)) == (1, 0)


async def test_websocket_upgrade_after_a_fast_get(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    async def echo_ws(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data.upper())
        return ws

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    app = web.Application()
    app.router.add_get("/ws", echo_ws)
    app.router.add_get("/plain", plain)
    gw = await start_gateway(make_config(await start_upstream(app)))
    conn = await connect(gw.port)
    await conn.send(get("/plain"))
    assert (await conn.answer()).body == b"plain"

    key = base64.b64encode(b"sixteen byte key").decode()
    await conn.send(
        get(
            "/ws",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        )
    )
    switched = await conn.answer()
    accept = base64.b64encode(hashlib.sha1(f"{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11".encode()).digest())
    assert switched.status == 101
    assert switched.headers["Sec-WebSocket-Accept"] == accept.decode()

    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi there"))
    await conn.send(b"\x81\x88" + mask + payload)  # FIN + text, masked, 8 bytes
    assert await wait(conn.reader.readexactly(10)) == b"\x81\x08HI THERE"
    assert (front_connections(gw), handed_over(gw)) == (0, 1)


# --- closing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["sized", "chunked"])
async def test_connection_close_is_answered_with_connection_close_then_closed(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, connect: Connect, framing: str
) -> None:
    body = {
        "sized": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    }[framing]
    gw = await start_gateway(make_config((await start_raw_upstream(body)).url))
    conn = await connect(gw.port)
    await conn.send(get("/bye", "Connection: close"))

    answer = await conn.answer()
    assert (answer.status, answer.body) == (200, b"hello")
    assert answer.headers.getall("Connection") == ["close"]
    assert ("Transfer-Encoding" in answer.headers) == (framing == "chunked")  # a streamed answer is chunked
    assert await conn.closed_by_server()
    await eventually(lambda: front_connections(gw) == 0)
    assert handed_over(gw) == 0  # closed by the front end itself


async def test_http_1_0_request_is_answered_without_chunking_and_closed(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    echo = Echo()
    gw = await start_gateway(make_config(await start_upstream(echo.app())))
    conn = await connect(gw.port)
    await conn.send(b"GET /old?v=1.0 HTTP/1.0\r\nHost: x\r\n\r\n")

    answer = await conn.answer()
    assert answer.version == "HTTP/1.1"  # RFC 9110 §6.2: a server sends its own version, 1.1 to 1.0 clients
    assert answer.status == 200
    assert answer.body == b"GET /old?v=1.0 "
    assert "chunked" not in answer.headers.get("Transfer-Encoding", "")  # HTTP/1.0 has no chunked coding
    assert await conn.closed_by_server()  # no keep-alive asked for: HTTP/1.0 closes
    assert echo.seen == [("GET", "/old?v=1.0", b"")]


# --- refusals ---------------------------------------------------------------------------------------------


async def test_malformed_request_line_is_a_json_400_and_others_are_served(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo = Echo()
    gw = await start_gateway(make_config(await start_upstream(echo.app())))
    other = await connect(gw.port)
    await other.send(get("/before"))
    assert (await other.answer()).status == 200

    bad = await connect(gw.port)
    await bad.send(b"GET /a b c HTTP/1.1 extra\r\nHost: x\r\n\r\n")
    refused = await bad.answer()
    assert refused.status == 400
    assert json.loads(refused.body)["error"]["code"] == "bad_request"
    assert await bad.closed_by_server()

    await other.send(get("/after"))  # the other open connection is unaffected
    assert (await other.answer()).body == b"GET /after "
    fresh = await raw_exchange(gw.port, get("/fresh", "Connection: close"))
    assert (fresh.status, fresh.body) == (200, b"GET /fresh ")
    assert [t for _, t, _ in echo.seen] == ["/before", "/after", "/fresh"]
    assert_no_errors(caplog, "gateway")


def _request(*headers: str, target: str = "/r") -> bytes:
    return get(target, *headers, "Connection: close").replace(b"Host: gw.example\r\n", b"Host: x\r\n", 1)


LIMIT = 1000  # listen.max_field_size in the differential tests
LIMITS = {  # the request, the status and error code it gets (the limits are the config's)
    "value-at-max-field-size": (_request("X-Big: " + "v" * LIMIT), 200, ""),
    "value-past-max-field-size": (_request("X-Big: " + "v" * (LIMIT + 1)), 431, "headers_too_large"),
    "name-past-max-field-size": (_request("X" * (LIMIT + 1) + ": v"), 431, "headers_too_large"),
    "headers-at-max-headers": (_request(*(f"X-{i}: 1" for i in range(8))), 200, ""),  # + Host, Connection
    "headers-past-max-headers": (_request(*(f"X-{i}: 1" for i in range(9))), 431, "headers_too_large"),
    "target-at-max-line": (_request(target="/" + "t" * 8189), 200, ""),
    "target-past-max-line": (_request(target="/" + "t" * 8190), 414, "uri_too_long"),
    "nul-in-value": (_request("X-A: a\x00b"), 400, "bad_request"),
    "leading-empty-line": (b"\r\n" + _request(), 200, ""),
}


@pytest.mark.parametrize(("raw", "status", "code"), list(LIMITS.values()), ids=list(LIMITS))
async def test_limits_and_refusals(
    start_raw_upstream: StartRawUpstream,
    start_gateway: StartGateway,
    raw: bytes,
    status: int,
    code: str,
) -> None:
    """A request within the limits reaches the upstream; one past them gets its JSON refusal, and the
    upstream never sees it."""
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    gw = await start_gateway(make_config(upstream.url, listen={"max_field_size": LIMIT, "max_headers": 10}))

    got = await raw_exchange(gw.port, raw)

    assert got.status == status
    assert len(upstream.requests) == (1 if status == 200 else 0)
    if status != 200:
        assert json.loads(got.body)["error"]["code"] == code


async def test_header_line_over_max_field_size_is_refused_with_431(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """At the configured default size (16 KiB, bigger than aiohttp's own 8190) a longer field is refused
    with 431 (RFC 6585 §5); one at the limit passes."""
    recorder = Recorder()
    config = make_config(await start_upstream(recorder.app(), max_field_size=65536))
    limit = config.listen.max_field_size
    gw = await start_gateway(config)

    at_limit = _request("Authorization: Bearer " + "j" * (limit - len("Bearer ")))
    over = _request("Authorization: Bearer " + "j" * (limit - len("Bearer ") + 1))

    got = await raw_exchange(gw.port, over)
    assert got.status == 431
    assert json.loads(got.body)["error"]["code"] == "headers_too_large"
    seen = len(recorder.seen)
    assert (await raw_exchange(gw.port, at_limit)).status == 200
    assert len(recorder.seen) == seen + 1
    assert recorder.last.headers["Authorization"] == "Bearer " + "j" * (limit - len("Bearer "))


SINGLETONS = {
    "no-host": b"GET /r HTTP/1.1\r\nConnection: close\r\n\r\n",
    "two-hosts": _request("Host: evil.example"),
    "two-content-types": _request("Content-Type: text/plain", "Content-Type: application/json"),
}


@pytest.mark.parametrize("raw", list(SINGLETONS.values()), ids=list(SINGLETONS))
async def test_host_and_singleton_header_refusals(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, raw: bytes
) -> None:
    """Refused as aiohttp's server refused them (its SINGLETON_HEADERS), before the upstream sees anything."""
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    gw = await start_gateway(make_config(upstream.url))

    got = await raw_exchange(gw.port, raw)

    assert got.status == 400
    assert json.loads(got.body)["error"]["code"] == "bad_request"
    assert upstream.requests == []


# --- clients that leave ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "how"),
    [("GET", "close"), ("GET", "reset"), ("HEAD", "close"), ("HEAD", "reset")],
    ids=["get-close", "get-reset", "head-close", "head-reset"],
)
async def test_client_leaving_mid_request_abandons_the_upstream_request(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    method: str,
    how: str,
) -> None:
    caplog.set_level(logging.INFO)
    arrived, cancelled = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/quick":
            return web.Response(text="quick")
        arrived.set()
        try:
            await asyncio.sleep(1.5)  # longer than the test waits: only a cancellation ends it in time
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    # aiohttp's TestServer runs with handler_cancellation: the upstream's handler is cancelled when the
    # gateway drops the upstream connection.
    gw = await start_gateway(make_config(await start_upstream(app)))
    conn = await connect(gw.port)
    await conn.send(get("/slow").replace(b"GET", method.encode(), 1))
    await wait(arrived.wait())
    assert (front_connections(gw), handed_over(gw)) == (1, 0)
    if how == "reset":
        sock = conn.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    await conn.close()

    await wait(cancelled.wait(), timeout=0.8)
    await eventually(lambda: gw.metric("session_gateway_client_disconnects_total") == 1, timeout=0.8)
    await eventually(lambda: gw.metric("session_gateway_requests_in_flight") == 0, timeout=0.8)
    assert gw.metric("session_gateway_requests_total", method=method, code="499") == 1
    await eventually(lambda: front_connections(gw) + handed_over(gw) == 0)
    assert_no_errors(caplog)


async def test_gateway_serves_on_after_a_client_left_mid_request(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    arrived = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/slow":
            arrived.set()
            await asyncio.sleep(0.2)
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    gw = await start_gateway(make_config(await start_upstream(app)))
    leaving = await connect(gw.port)
    await leaving.send(get("/slow"))
    await wait(arrived.wait())
    await leaving.close()

    for path in ("/a", "/b"):  # while the abandoned one is (or was) in flight, and after
        fresh = await raw_exchange(gw.port, get(path, "Connection: close"))
        assert (fresh.status, fresh.body) == (200, path.encode())
        await asyncio.sleep(0.25)
    await eventually(lambda: gw.metric("session_gateway_requests_in_flight") == 0)
    await eventually(lambda: front_connections(gw) == 0)


# --- what the front end writes ------------------------------------------------------------------------------


async def test_unsized_upstream_body_is_streamed_chunked_as_it_arrives(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    pieces = [b"first piece|", b"second|", b"third and last"]
    next_piece = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            if "lockstep" in request.query:
                await wait(next_piece.wait())  # the client must have had this piece before the next is sent
                next_piece.clear()
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stream", handle)
    gw = await start_gateway(make_config(await start_upstream(app)))
    conn = await connect(gw.port)
    await conn.send(get("/stream?lockstep"))

    head = await wait(conn.reader.readuntil(b"\r\n\r\n"))
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert b"Content-Length" not in head
    received = []
    for piece in pieces:
        size = int(await wait(conn.reader.readuntil(b"\r\n")), 16)
        received.append(await wait(conn.reader.readexactly(size + 2)))
        assert received[-1] == piece + b"\r\n"  # one upstream piece, one chunk, before the next exists
        next_piece.set()
    assert await wait(conn.reader.readexactly(5)) == b"0\r\n\r\n"

    await conn.send(get("/stream"))  # the connection is reusable after the last chunk
    again = await conn.answer()
    assert again.body == b"".join(pieces)
    assert (front_connections(gw), handed_over(gw)) == (1, 0)


async def test_one_mebibyte_sized_body_keeps_its_content_length(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    data = random.Random(1).randbytes(MiB)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/big", handle)
    gw = await start_gateway(make_config(await start_upstream(app)))
    conn = await connect(gw.port)
    for _ in range(2):
        await conn.send(get("/big"))
        answer = await conn.answer()
        assert answer.status == 200
        assert answer.headers.getall("Content-Length") == [str(MiB)]
        assert "Transfer-Encoding" not in answer.headers
        assert answer.body == data
    assert (front_connections(gw), handed_over(gw)) == (1, 0)


async def test_expect_100_continue_gets_the_interim_answer_then_the_body_goes_upstream(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    echo = Echo()
    gw = await start_gateway(make_config(await start_upstream(echo.app())))
    conn = await connect(gw.port)
    await conn.send(get("/warmup"))  # mid-connection
    assert (await conn.answer()).status == 200

    await conn.send(b"POST /ask HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    interim = await conn.answer()
    assert interim.status == 100  # before any byte of the body was sent
    await conn.send(b"hello there")
    final = await conn.answer()
    assert (final.status, final.body) == (200, b"POST /ask hello there")
    assert echo.seen[-1] == ("POST", "/ask", b"hello there")
    assert (front_connections(gw), handed_over(gw)) == (1, 0)


async def test_gateways_own_error_is_framed_and_dated(start_gateway: StartGateway, connect: Connect) -> None:
    gw = await start_gateway(make_config(closed_url()))
    conn = await connect(gw.port)
    for _ in range(2):  # and the connection stays usable after an error
        await conn.send(get("/x"))
        answer = await conn.answer()
        assert answer.status == 502
        assert answer.headers.getall("Content-Length") == [str(len(answer.body))]
        assert answer.headers["Content-Type"].startswith("application/json")
        date = email.utils.parsedate_to_datetime(answer.headers["Date"])
        assert date.tzinfo is not None and answer.headers["Date"].endswith(" GMT")
        error = json.loads(answer.body)
        assert set(error) == {"error"} and set(error["error"]) == {"code", "message"}
        assert error["error"]["code"] == "upstream_unavailable"
        assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    assert (front_connections(gw), handed_over(gw)) == (1, 0)


# --- back-pressure ----------------------------------------------------------------------------------------


async def test_slow_reader_gets_every_byte_while_the_gateway_buffers_little(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    size = 8 * MiB
    data = random.Random(8).randbytes(size)

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        for start in range(0, size, 64 * 1024):
            await response.write(data[start : start + 64 * 1024])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/huge", handle)
    gw = await start_gateway(make_config(await start_upstream(app)))
    conn = await connect(gw.port, rcvbuf=16 * 1024)
    await conn.send(get("/huge"))
    await eventually(lambda: front_connections(gw) == 1)
    transport = only_connection(gw).transport
    assert transport is not None

    buffered: list[int] = []

    async def sample() -> None:
        while True:
            buffered.append(transport.get_write_buffer_size())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.sleep(0.3)  # the client reads nothing at all for a while
        head = await wait(conn.reader.readuntil(b"\r\n\r\n"))
        received = bytearray()
        while len(received) < size:
            chunk = await wait(conn.reader.read(256 * 1024))
            assert chunk, f"connection closed after {len(received)} of {size} bytes"
            received += chunk
            await asyncio.sleep(0.001)
    finally:
        sampler.cancel()

    assert b"\r\nContent-Length: %d\r\n" % size in head
    assert bytes(received) == data
    assert max(buffered) > 0  # the client really was behind
    assert max(buffered) < MiB  # paused at the transport's high-water mark, not the whole body in memory


async def test_aiohttp_clients_ordinary_requests_stay_in_the_front_end(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """The ordinary client path (aiohttp's client, keep-alive) stays on one front-end connection."""
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app())))
    for path in ("/1", "/2", "/3"):
        response = await gw.client.get(path)
        assert await response.read() == b"ok"
    response = await gw.client.post("/4", data=b"x" * 1000)
    assert await response.read() == b"ok"
    assert [s.raw_path for s in recorder.seen] == ["/1", "/2", "/3", "/4"]
    assert (front_connections(gw), handed_over(gw)) == (1, 0)
    async with aiohttp.ClientSession() as other, other.head(f"{gw.url}/5") as head:
        assert head.status == 200
    assert recorder.last.method == "HEAD"
