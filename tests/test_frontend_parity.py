"""The two lanes of the proxy port answer alike: each case runs on the fast front end and on aiohttp's own
server (the same app), from a review that found them differing."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web
from conftest import (
    LOOPBACK,
    StartGateway,
    StartRawUpstream,
    StartReference,
    StartUpstream,
    make_config,
    raw_exchange,
)
from prometheus_client import CollectorRegistry
from test_frontend import front_end

from gateway.app import create_app
from gateway.client import client_script

MiB = 1024 * 1024
SHOP = "https://shop.example"


# --- an upstream answer with Content-Length: 0 (was a 500 in both lanes) ---------------------------


@pytest.mark.parametrize("lane", ["fast", "aiohttp"])
async def test_empty_sized_upstream_body_is_forwarded(
    start_upstream: StartUpstream, start_gateway: StartGateway, start_reference: StartReference, lane: str
) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=201)  # aiohttp sends Content-Length: 0

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", empty)
    config = make_config(await start_upstream(app))
    port = (await start_gateway(config)).port if lane == "fast" else await start_reference(config)

    got = await raw_exchange(
        port, b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )

    assert (got.status, got.body) == (201, b"")


# --- write back-pressure for whole responses ---------------------------------------


async def _pipeline_without_reading(port: int, requests: int) -> tuple[socket.socket, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port)), 5)
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /sixty HTTP/1.1\r\nHost: x\r\n\r\n" * requests)  # ~9 KiB of requests
    await asyncio.wait_for(writer.drain(), 5)
    return sock, writer


async def _sixty_kib_upstream(start_upstream: StartUpstream) -> str:
    body = b"x" * (60 * 1024)  # under SMALL_BODY: the proxy answers it whole (_send_whole)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return await start_upstream(app)


async def test_fast_lane_whole_responses_respect_back_pressure(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(make_config(await _sixty_kib_upstream(start_upstream)))
    _, writer = await _pipeline_without_reading(gw.port, 300)  # 300 x 60 KiB = 18 MiB of answers
    try:
        await asyncio.sleep(1.0)  # the client reads nothing
        (conn,) = front_end(gw).connections
        assert conn.transport is not None
        buffered = conn.transport.get_write_buffer_size()
    finally:
        writer.close()
    assert buffered < MiB, (
        f"{buffered} bytes buffered for a client that reads nothing"
    )  # was ~14 MiB before _serve awaited drain


async def test_control_aiohttp_lane_whole_responses_respect_back_pressure(
    start_upstream: StartUpstream, aiohttp_server: Any
) -> None:
    server = await aiohttp_server(
        create_app(make_config(await _sixty_kib_upstream(start_upstream)), registry=CollectorRegistry())
    )
    _, writer = await _pipeline_without_reading(server.port, 300)
    try:
        await asyncio.sleep(1.0)
        (conn,) = server.runner.server.connections
        buffered = conn.transport.get_write_buffer_size()
    finally:
        writer.close()
    assert buffered < MiB  # observed ~100 KiB: aiohttp drains after each response


# --- trailing whitespace of header values ---------------------------------------


async def test_trailing_whitespace_of_header_values_is_not_forwarded(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, start_reference: StartReference
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    config = make_config(upstream.url)
    gw = await start_gateway(config)
    reference = await start_reference(config)
    raw = b"GET /r HTTP/1.1\r\nHost: x\r\nX-A: a \t\r\nConnection: close\r\n\r\n"

    assert (await raw_exchange(reference, raw)).status == 200
    assert b"\r\nX-A: a\r\n" in upstream.requests[-1]  # aiohttp's lane
    assert (await raw_exchange(gw.port, raw)).status == 200
    assert b"\r\nX-A: a\r\n" in upstream.requests[-1]


async def test_preflight_answer_is_the_same_in_both_lanes_for_an_origin_with_trailing_space(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, start_reference: StartReference
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    config = make_config(upstream.url, cors={"allow_origins": (SHOP,)})
    gw = await start_gateway(config)
    reference = await start_reference(config)
    raw = (
        f"OPTIONS /chat HTTP/1.1\r\nHost: x\r\nOrigin: {SHOP} \r\n"
        "Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
    ).encode()

    expected = await raw_exchange(reference, raw)
    assert expected.status == 204
    assert expected.headers["Access-Control-Allow-Origin"] == SHOP
    got = await raw_exchange(gw.port, raw)
    assert got.status == expected.status
    allow = [name for name in expected.headers if name.lower().startswith("access-control-")]
    assert allow and {n: got.headers.getall(n) for n in allow} == {
        n: expected.headers.getall(n) for n in allow
    }


# --- the own-route check and the target's spelling -----------------------------------------------


@pytest.mark.parametrize("target", ["/_gateway/session-client%2Ejs", "/_gateway/session-client.js#x"])
async def test_client_route_is_served_in_both_lanes_whatever_its_spelling(
    start_raw_upstream: StartRawUpstream,
    start_gateway: StartGateway,
    start_reference: StartReference,
    target: str,
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nupstream")
    config = make_config(upstream.url)
    gw = await start_gateway(config)
    reference = await start_reference(config)
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    expected = await raw_exchange(reference, raw)
    assert (expected.status, expected.body) == (200, client_script())  # aiohttp's router serves the JS client
    got = await raw_exchange(gw.port, raw)
    assert (got.status, got.body) == (expected.status, expected.body)
