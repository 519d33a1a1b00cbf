"""The proxy end to end over loopback: a real upstream, the gateway in front of it, real clients."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gateway_helpers import (
    LOOPBACK,
    Recorder,
    SpawnGateway,
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
from multidict import CIMultiDict

MB = 1024 * 1024


def error_body(code: str, body: Any) -> None:
    """The gateway's error shape, exactly: {"error": {"code": code, "message": "<text>"}}."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# --- byte-exact forwarding ------------------------------------------------------------------------------

TARGET = "/a%2Fb;x=1?q=%20+y&q=2"
METHODS = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "PURGE",
]  # TRACE: test_hostile_requests.py


@pytest.mark.parametrize("body", [b"", b"payload \x00\xff"], ids=["no-body", "body"])
@pytest.mark.parametrize("method", METHODS)
async def test_every_method_is_forwarded_with_its_raw_target(
    start_upstream: StartUpstream, start_gateway: StartGateway, method: str, body: bytes
) -> None:
    recorder = Recorder()
    # A short read_timeout: a body announced upstream but never sent shows as a 504, not a long hang.
    gw = await start_gateway(
        make_config(await start_upstream(recorder.app(), prefix="/bot/v1"), upstream={"read_timeout": 2.0})
    )
    head = f"{method} {TARGET} HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    response = await raw_exchange(gw.port, head.encode() + b"\r\n" + body)

    assert response.status == 200
    assert len(recorder.seen) == 1
    seen = recorder.last
    assert seen.method == method
    assert seen.raw_path == "/bot/v1" + TARGET
    assert seen.body == body
    if method != "HEAD":
        assert response.body.endswith(b"ok")


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb;x=1?q=%20+y&q=2",
        "/",
        "//double//slash",
        "/a/./b/../c",  # dot segments are the upstream's business, not re-resolved on the way
        "/%7Euser?a=b%26c",
        "/x?a=%zz",  # an invalid escape is forwarded, not "fixed"
        "/caf%C3%A9?%E2%82%AC=1&&",
        "/x?a=1;b=2&c",
    ],
    ids=[
        "slash-param-query",
        "root",
        "double-slash",
        "dot-segments",
        "tilde",
        "bad-escape",
        "utf8",
        "semicolons",
    ],
)
@pytest.mark.parametrize(
    "prefix", ["/bot/v1", "/bot/v1/", ""], ids=["prefix", "prefix-trailing-slash", "no-prefix"]
)
async def test_raw_target_arrives_byte_exact_under_the_upstream_prefix(
    start_upstream: StartUpstream, start_gateway: StartGateway, target: str, prefix: str
) -> None:
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app(), prefix=prefix)))
    response = await raw_exchange(
        gw.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )

    assert response.status == 200
    assert recorder.last.raw_path == prefix.rstrip("/") + target


async def test_redirects_are_passed_to_the_client_not_followed(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.raw_path)
        if request.path == "/bot/start":
            raise web.HTTPFound("/bot/elsewhere?x=1")
        return web.Response(text="followed")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    gw = await start_gateway(make_config(await start_upstream(app, prefix="/bot")))
    response = await gw.client.get("/start", allow_redirects=False)

    assert response.status == 302
    # Mapped back to the client's URL space: the bot lives under /bot, the client calls /start.
    assert response.headers["Location"] == "/elsewhere?x=1"
    assert hits == ["/bot/start"]


async def test_three_set_cookie_headers_reach_the_client_as_three(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    cookies = ["a=1; Path=/", "b=2; Path=/; HttpOnly", "c=3; Max-Age=60; Path=/x"]

    async def handle(request: web.Request) -> web.Response:
        headers: CIMultiDict[str] = CIMultiDict()
        for value in cookies:
            headers.add("Set-Cookie", value)
        return web.Response(text="ok", headers=headers)

    app = web.Application()
    app.router.add_get("/", handle)
    gw = await start_gateway(make_config(await start_upstream(app)))
    response = await gw.client.get("/")

    assert response.status == 200
    received = response.headers.getall("Set-Cookie")
    # The gateway may add its own affinity cookie; the bot's three arrive as three, unchanged and in order.
    assert [v for v in received if v.split("=", 1)[0] in {"a", "b", "c"}] == cookies


# --- hop-by-hop headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "dropped"),
    [
        ("Connection: X-Foo\r\nX-Foo: 1", ["X-Foo"]),
        ("Connection: keep-alive, X-Foo,X-Bar\r\nX-Foo: 1\r\nX-Bar: 2", ["X-Foo", "X-Bar"]),
        ("Connection: X-Foo\r\nConnection: X-Bar\r\nX-Foo: 1\r\nX-Bar: 2", ["X-Foo", "X-Bar"]),
        ("Keep-Alive: timeout=5, max=100", ["Keep-Alive"]),
        ("TE: trailers", ["TE"]),
        ("Trailer: X-Checksum", ["Trailer"]),
        ("Proxy-Authorization: Basic Zm9vOmJhcg==", ["Proxy-Authorization"]),
        ("Proxy-Connection: keep-alive", ["Proxy-Connection"]),
        ("Upgrade: h2c", ["Upgrade"]),
    ],
    ids=[
        "connection-names-x-foo",
        "connection-token-list",
        "connection-repeated",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade-not-websocket",
    ],
)
async def test_hop_by_hop_request_headers_do_not_reach_the_upstream(
    start_upstream: StartUpstream, start_gateway: StartGateway, sent: str, dropped: list[str]
) -> None:
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app())))
    request = f"GET /x HTTP/1.1\r\nHost: x\r\n{sent}\r\nX-Keep: yes\r\n\r\n"
    # Connection: close comes last so it does not hide the token lists under test; a second request
    # on the same connection is not needed.
    response = await raw_exchange(
        gw.port, request.encode().replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    )

    assert response.status == 200
    headers = recorder.last.headers
    assert headers["X-Keep"] == "yes"  # end-to-end headers still pass
    for name in dropped:
        assert name not in headers
    tokens = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    assert not tokens & {n.lower() for n in dropped}


@pytest.mark.parametrize(
    ("sent", "dropped"),
    [
        ("Connection: X-Bar\r\nX-Bar: 1", ["X-Bar"]),
        ("Connection: keep-alive, X-Bar\r\nX-Bar: 1\r\nKeep-Alive: timeout=5", ["X-Bar", "Keep-Alive"]),
        ("Keep-Alive: timeout=5", ["Keep-Alive"]),
        ("Trailer: X-Checksum", ["Trailer"]),
        ('Proxy-Authenticate: Basic realm="bot"', ["Proxy-Authenticate"]),
        ("Proxy-Connection: keep-alive", ["Proxy-Connection"]),
        ("Upgrade: h2c", ["Upgrade"]),
        ("TE: trailers", ["TE"]),
    ],
    ids=[
        "connection-names-x-bar",
        "connection-list",
        "keep-alive",
        "trailer",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
        "te",
    ],
)
async def test_hop_by_hop_response_headers_do_not_reach_the_client(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, sent: str, dropped: list[str]
) -> None:
    upstream = await start_raw_upstream(
        f"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{sent}\r\nX-Keep: yes\r\n\r\nok".encode()
    )
    gw = await start_gateway(make_config(upstream.url))
    response = await gw.client.get("/")

    assert response.status == 200
    assert await response.read() == b"ok"
    assert response.headers["X-Keep"] == "yes"
    for name in dropped:
        assert name not in response.headers


# --- bodies ---------------------------------------------------------------------------------------------


def _gzipped(size: int) -> bytes:
    # os.urandom does not compress, so the large case really is larger than one small-body read.
    return gzip.compress(os.urandom(size) if size > 4096 else b'{"answer": "hello"}' * (size // 19 + 1))


@pytest.mark.parametrize("size", [1000, 300_000], ids=["small", "large"])
async def test_gzip_response_passes_byte_exact_with_its_encoding(
    start_upstream: StartUpstream, start_gateway: StartGateway, size: int
) -> None:
    compressed = _gzipped(size)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=compressed, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    app = web.Application()
    app.router.add_get("/", handle)
    gw = await start_gateway(make_config(await start_upstream(app)))
    response = await gw.client.get("/", auto_decompress=False, headers={"Accept-Encoding": "gzip"})

    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(compressed))
    assert await response.read() == compressed


@pytest.mark.parametrize("size", [1000, 300_000], ids=["small", "large"])
async def test_gzip_request_body_reaches_the_upstream_undecoded(
    start_upstream: StartUpstream, start_gateway: StartGateway, size: int
) -> None:
    recorder = Recorder()
    compressed = _gzipped(size)
    # The upstream must not decode either, so it sees the bytes on the wire.
    gw = await start_gateway(make_config(await start_upstream(recorder.app(), auto_decompress=False)))
    response = await gw.client.post(
        "/", data=compressed, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )

    assert response.status == 200
    assert recorder.last.headers["Content-Encoding"] == "gzip"
    assert recorder.last.body == compressed


async def test_sse_events_reach_the_client_before_the_upstream_finishes(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    release = asyncio.Event()
    finished = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await wait(release.wait())
        await response.write(b"data: two\n\n")
        await response.write_eof()
        finished.set()
        return response

    app = web.Application()
    app.router.add_get("/events", events)
    gw = await start_gateway(make_config(await start_upstream(app)))
    response = await gw.client.get("/events")

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert await wait(response.content.readuntil(b"\n\n")) == b"data: one\n\n"
    assert not finished.is_set()
    release.set()
    assert await wait(response.content.read()) == b"data: two\n\n"


def _hashing_app(received: list[dict[str, Any]]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        received.append(
            {
                "sha256": digest.hexdigest(),
                "size": size,
                "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
            }
        )
        return web.json_response({"sha256": digest.hexdigest()})

    app = web.Application()
    app.router.add_post("/upload", handle)
    return app


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_five_megabyte_upload_arrives_identical(
    start_upstream: StartUpstream, start_gateway: StartGateway, framing: str
) -> None:
    received: list[dict[str, Any]] = []
    gw = await start_gateway(make_config(await start_upstream(_hashing_app(received))))
    data = os.urandom(5 * MB)
    # BytesIO: aiohttp warns (an error here) about 5 MB of raw bytes; it still sends a Content-Length.
    body: io.BytesIO | AsyncIterator[bytes] = (
        io.BytesIO(data) if framing == "content-length" else _chunks(data)
    )
    response = await gw.client.post("/upload", data=body)

    assert response.status == 200
    expected = hashlib.sha256(data).hexdigest()
    assert (await response.json())["sha256"] == expected
    assert received == [{"sha256": expected, "size": 5 * MB, "chunked": framing == "chunked"}]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_request_body_is_streamed_not_buffered(
    start_upstream: StartUpstream, start_gateway: StartGateway, framing: str
) -> None:
    first_chunk_arrived = asyncio.Event()
    part = os.urandom(256 * 1024)  # larger than any small-body read

    async def handle(request: web.Request) -> web.Response:
        first = await request.content.readany()
        first_chunk_arrived.set()
        rest = await request.content.read()
        return web.json_response({"size": len(first) + len(rest)})

    app = web.Application()
    app.router.add_post("/upload", handle)
    # A body past upstream.buffer_request_body streams; one within it is read whole first (test_hostile_clients.py).
    gw = await start_gateway(
        make_config(await start_upstream(app), upstream={"buffer_request_body": len(part) // 2})
    )

    async def body() -> AsyncIterator[bytes]:
        yield part
        # The client sends the second half only once the upstream has started reading the first:
        # a gateway that buffered the whole body would wait here forever (and the test times out).
        await wait(first_chunk_arrived.wait())
        yield part

    headers = {"Content-Length": str(2 * len(part))} if framing == "content-length" else {}
    response = await gw.client.post("/upload", data=body(), headers=headers)

    assert response.status == 200
    assert (await response.json())["size"] == 2 * len(part)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_past_max_body_size_is_413(
    start_upstream: StartUpstream, start_gateway: StartGateway, framing: str
) -> None:
    recorder = Recorder()
    gw = await start_gateway(
        make_config(await start_upstream(recorder.app()), upstream={"max_body_size": 1000})
    )
    data = b"x" * 2500
    body: bytes | AsyncIterator[bytes] = data if framing == "content-length" else _chunks(data, 600)
    response = await gw.client.post("/upload", data=body)

    assert response.status == 413
    error_body("body_too_large", await response.json())
    if framing == "content-length":
        assert recorder.seen == []  # refused from the declared length, before connecting upstream
    assert all(len(seen.body) <= 1000 for seen in recorder.seen)
    assert gw.metric("session_gateway_requests_total", method="POST", code="413") == 1


async def test_body_at_max_body_size_passes(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    recorder = Recorder()
    gw = await start_gateway(
        make_config(await start_upstream(recorder.app()), upstream={"max_body_size": 1000})
    )
    response = await gw.client.post("/upload", data=_chunks(b"y" * 1000, 300))

    assert response.status == 200
    assert recorder.last.body == b"y" * 1000


# --- upstream failures ----------------------------------------------------------------------------------


async def test_closed_upstream_port_is_502_upstream_unavailable(start_gateway: StartGateway) -> None:
    gw = await start_gateway(make_config(closed_url()))
    response = await gw.client.get("/x")

    assert response.status == 502
    assert response.content_type == "application/json"
    error_body("upstream_unavailable", await response.json())
    assert gw.metric("session_gateway_upstream_errors_total", reason="connect") == 1
    assert gw.metric("session_gateway_upstream_errors_total", reason="timeout") == 0


async def test_silent_upstream_is_504_upstream_timeout(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await wait(release.wait())  # longer than read_timeout, before any header
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    gw = await start_gateway(make_config(await start_upstream(app), upstream={"read_timeout": 0.3}))
    try:
        response = await gw.client.get("/slow")
    finally:
        release.set()

    assert response.status == 504
    error_body("upstream_timeout", await response.json())
    assert gw.metric("session_gateway_upstream_errors_total", reason="timeout") == 1
    assert gw.metric("session_gateway_upstream_errors_total", reason="connect") == 0


async def test_read_timeout_is_not_a_cap_on_stream_length(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def ticks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(10):  # 1 s in all, never silent for read_timeout
            await response.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/ticks", ticks)
    gw = await start_gateway(make_config(await start_upstream(app), upstream={"read_timeout": 0.3}))
    response = await gw.client.get("/ticks")
    body = await wait(response.read())

    assert response.status == 200
    assert body == b"".join(f"data: {i}\n\n".encode() for i in range(10))
    assert gw.metric("session_gateway_upstream_errors_total", reason="timeout") == 0


# --- isolation and forwarding headers -------------------------------------------------------------------


async def test_clients_never_see_each_others_cookies(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    seen_cookies: list[str | None] = []

    async def login(request: web.Request) -> web.Response:
        response = web.Response(text="welcome")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        return response

    async def whoami(request: web.Request) -> web.Response:
        seen_cookies.append(request.headers.get("Cookie"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/whoami", whoami)
    gw = await start_gateway(make_config(await start_upstream(app)))

    first = await gw.client.get("/login")
    assert "a=1; Path=/" in first.headers.getall("Set-Cookie")
    await gw.client.get("/whoami")  # client 1 sends its cookie back
    async with aiohttp.ClientSession() as other, other.get(f"{gw.url}/whoami") as second:
        assert second.status == 200  # client 2: its own (empty) cookie jar

    assert seen_cookies == ["a=1", None]


async def test_forwarded_headers_replace_what_an_untrusted_client_sent(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app())))
    await gw.client.get(
        "/",
        headers={
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
        },
    )

    headers = recorder.last.headers
    assert headers.getall("X-Forwarded-For") == [LOOPBACK]
    assert headers.getall("X-Forwarded-Proto") == ["http"]
    assert headers.getall("X-Forwarded-Host") == [f"{LOOPBACK}:{gw.port}"]


async def test_forwarded_headers_added_when_the_client_sent_none(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    recorder = Recorder()
    gw = await start_gateway(
        make_config(await start_upstream(recorder.app()), listen={"trusted_proxies": ("127.0.0.0/8",)})
    )
    await gw.client.get("/")

    headers = recorder.last.headers
    assert headers["X-Forwarded-For"] == LOOPBACK
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == f"{LOOPBACK}:{gw.port}"


async def test_forwarded_headers_from_a_trusted_proxy_are_kept_and_appended_to(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    recorder = Recorder()
    gw = await start_gateway(
        make_config(await start_upstream(recorder.app()), listen={"trusted_proxies": (LOOPBACK,)})
    )
    await gw.client.get(
        "/",
        headers={
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "chat.example",
        },
    )

    headers = recorder.last.headers
    assert headers.getall("X-Forwarded-For") == [f"203.0.113.7, {LOOPBACK}"]
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == "chat.example"


@pytest.mark.parametrize("target_host", ["other.host", "decoy"])
async def test_absolute_form_request_never_reaches_the_named_host(
    start_upstream: StartUpstream, start_gateway: StartGateway, target_host: str
) -> None:
    recorder, decoy = Recorder(), Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app(), prefix="/bot")))
    host = (await start_upstream(decoy.app()))[len("http://") :] if target_host == "decoy" else target_host
    response = await raw_exchange(
        gw.port, f"GET http://{host}/x?y=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )

    assert decoy.seen == []
    if response.status == 400:
        assert recorder.seen == []
    else:
        assert response.status == 200
        assert [s.raw_path for s in recorder.seen] == ["/bot/x?y=1"]


# --- clients that leave, clients that misbehave ---------------------------------------------------------


async def test_client_disconnect_mid_stream_closes_the_upstream_quietly(
    start_upstream: StartUpstream, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    upstream_saw_close = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"data: tick\n\n")
                await asyncio.sleep(0.02)
        except (ConnectionError, aiohttp.ClientConnectionResetError, asyncio.CancelledError):
            upstream_saw_close.set()  # its write failed, or aiohttp cancelled it on connection loss
            raise

    app = web.Application()
    app.router.add_get("/endless", endless)
    gw = await start_gateway(make_config(await start_upstream(app)))
    response = await gw.client.get("/endless")
    assert await wait(response.content.readuntil(b"\n\n")) == b"data: tick\n\n"
    response.close()  # drops the connection mid-stream

    await wait(upstream_saw_close.wait())
    await eventually(lambda: gw.metric("session_gateway_client_disconnects_total") == 1)
    await eventually(lambda: gw.metric("session_gateway_requests_in_flight") == 0)
    assert_no_errors(caplog)


MALFORMED = {
    "header-without-colon": b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "bad-method-token": b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad-content-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "two-content-lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "content-length-and-chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad-chunk-size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"  # then a size that is not hex
        b"zz\r\nabc\r\n0\r\n\r\n"
    ),
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello on the plain port
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_request_is_400_never_500(
    start_upstream: StartUpstream, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app())))
    response = await raw_exchange(gw.port, raw)

    assert response.status == 400
    assert recorder.seen == []
    assert gw.metric("session_gateway_requests_total", method="GET", code="500") == 0
    assert gw.metric("session_gateway_requests_total", method="POST", code="500") == 0
    assert gw.metric("session_gateway_requests_total", method="OPTIONS", code="500") == 0
    assert_no_errors(caplog, "gateway")


async def test_asterisk_target_is_never_forwarded(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app())))
    response = await raw_exchange(gw.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

    assert 400 <= response.status < 500
    assert set(json.loads(response.body)) == {"error"}
    assert recorder.seen == []


async def test_asterisk_target_is_400_bad_request(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(make_config(await start_upstream(Recorder().app())))
    response = await raw_exchange(gw.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

    assert response.status == 400
    error_body("bad_request", json.loads(response.body))


# --- header bytes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"caf\xc3\xa9", "€ und 日本".encode(), b"\xff\xfe not utf-8 \x80"],
    ids=["latin-1-range", "beyond-latin-1", "invalid-utf-8"],
)
async def test_request_header_bytes_arrive_byte_exact(
    start_upstream: StartUpstream, start_gateway: StartGateway, value: bytes
) -> None:
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app())))
    response = await raw_exchange(
        gw.port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Name: " + value + b"\r\n\r\n"
    )

    assert response.status == 200
    # aiohttp (both ends) decodes header bytes as UTF-8 with surrogateescape; encoding back gives wire bytes.
    assert recorder.last.headers["X-Name"].encode("utf-8", "surrogateescape") == value


@pytest.mark.parametrize(
    "value",
    [b"caf\xc3\xa9", 'attachment; filename="€.pdf"'.encode()],
    ids=["latin-1-range", "beyond-latin-1"],
)
async def test_utf8_response_header_bytes_reach_the_client_byte_exact(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, value: bytes
) -> None:
    upstream = await start_raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Name: " + value + b"\r\n\r\nok"
    )
    gw = await start_gateway(make_config(upstream.url))
    response = await gw.client.get("/")

    assert response.status == 200
    assert [v for k, v in response.raw_headers if k.lower() == b"x-name"] == [value]


@pytest.mark.parametrize("size", [2, 300_000], ids=["small", "large"])
async def test_no_content_type_is_added_to_a_response_without_one(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, size: int
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"k" * size)
    gw = await start_gateway(make_config(upstream.url))
    response = await gw.client.get("/")

    assert await response.read() == b"k" * size
    assert "Content-Type" not in response.headers


@pytest.mark.slow
async def test_head_requests_never_freeze_the_gateway(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway
) -> None:
    """Regression: the second HEAD spun the event loop forever (aiohttp's shared empty payload, aiohttp#7616).

    A subprocess, so a regression fails this test on its client timeout instead of freezing the test's loop.
    """
    recorder = Recorder()
    gw = await spawn_gateway("serve", upstream_url=await start_upstream(recorder.app()))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for path in ("/one", "/two", "/three"):
            async with session.head(f"{gw.url}{path}") as response:
                assert response.status == 200
        async with session.get(f"{gw.url}/after") as response:
            assert await response.read() == b"ok"

    assert [(s.method, s.raw_path) for s in recorder.seen] == [
        ("HEAD", "/one"),
        ("HEAD", "/two"),
        ("HEAD", "/three"),
        ("GET", "/after"),
    ]


RESPONSE_FRAMINGS = {
    "no-content": (b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", 204, b""),
    # RFC 9110 §8.6: a 304 may carry the 200's Content-Length; no body follows it.
    "not-modified-with-length": (
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: "v1"\r\n\r\n',
        304,
        b"",
    ),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        200,
        b"abcde",
    ),
    "close-delimited": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", 200, b"until the end"),
    "early-hints-first": (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
    ),
    "http-1.0": (b"HTTP/1.0 200 OK\r\n\r\nold style", 200, b"old style"),
}


@pytest.mark.parametrize(
    ("raw", "status", "body"), list(RESPONSE_FRAMINGS.values()), ids=list(RESPONSE_FRAMINGS)
)
async def test_upstream_response_framings(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, raw: bytes, status: int, body: bytes
) -> None:
    upstream = await start_raw_upstream(raw)
    gw = await start_gateway(make_config(upstream.url, upstream={"read_timeout": 2.0}))
    for _ in range(2):  # the second on a fresh or pooled connection, whichever the first left
        response = await wait(gw.client.get("/", headers={"If-None-Match": '"v1"'}))
        assert response.status == status
        assert await wait(response.read()) == body
    assert gw.metric("session_gateway_upstream_errors_total", reason="protocol") == 0


async def test_upstream_closing_before_its_declared_length_is_502(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")  # then closes
    gw = await start_gateway(make_config(upstream.url))
    response = await gw.client.get("/")

    assert response.status == 502  # the head was not sent yet: an honest error, not a short 200
    error_body("upstream_unavailable", await response.json())
    assert gw.metric("session_gateway_upstream_errors_total", reason="reset") == 1
    assert_no_errors(caplog, "gateway")


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70_000,
    ],
    ids=["chunked", "long-content-length"],
)
async def test_upstream_dying_mid_stream_truncates_the_client_response(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, raw: bytes
) -> None:
    upstream = await start_raw_upstream(raw)  # closes without finishing the body
    gw = await start_gateway(make_config(upstream.url))
    response = await gw.client.get("/")

    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):  # never a body that looks complete
        await wait(response.read())
    assert gw.metric("session_gateway_upstream_errors_total", reason="reset") == 1
