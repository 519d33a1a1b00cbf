"""Cases from a review that found the proxy port's two former lanes (a fast one and aiohttp's server)
answering differently; with one front end they pin what the answer is."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from frontend_helpers import Connect, MiB, only_connection
from gateway_helpers import StartGateway, StartRawUpstream, StartUpstream, make_config, raw_exchange

from gateway.edge.client import client_script

SHOP = "https://shop.example"


# --- an upstream answer with Content-Length: 0 (was a 500) ---------------------------


async def test_empty_sized_upstream_body_is_forwarded(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=201)  # aiohttp sends Content-Length: 0

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", empty)
    config = make_config(await start_upstream(app))
    got = await raw_exchange(
        (await start_gateway(config)).port,
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )

    assert (got.status, got.body) == (201, b"")


# --- write back-pressure for whole responses ---------------------------------------


async def _pipeline_without_reading(connect: Connect, port: int, requests: int) -> None:
    """Pipeline `requests` GETs on a connection with a small receive window, and read none of the answers."""
    conn = await connect(port, rcvbuf=16 * 1024)
    await conn.send(b"GET /sixty HTTP/1.1\r\nHost: x\r\n\r\n" * requests)  # ~9 KiB of requests


async def _sixty_kib_upstream(start_upstream: StartUpstream) -> str:
    body = b"x" * (60 * 1024)  # under SMALL_BODY: the proxy answers it whole (_send_whole)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return await start_upstream(app)


async def test_whole_responses_respect_back_pressure(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    gw = await start_gateway(make_config(await _sixty_kib_upstream(start_upstream)))
    await _pipeline_without_reading(connect, gw.port, 300)  # 300 x 60 KiB = 18 MiB of answers
    await asyncio.sleep(1.0)  # the client reads nothing
    conn = only_connection(gw)
    assert conn.transport is not None
    buffered = conn.transport.get_write_buffer_size()
    assert buffered < MiB, (
        f"{buffered} bytes buffered for a client that reads nothing"
    )  # was ~14 MiB before _serve awaited drain


# --- trailing whitespace of header values ---------------------------------------


async def test_trailing_whitespace_of_header_values_is_not_forwarded(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    gw = await start_gateway(make_config(upstream.url))
    raw = b"GET /r HTTP/1.1\r\nHost: x\r\nX-A: a \t\r\nConnection: close\r\n\r\n"

    assert (await raw_exchange(gw.port, raw)).status == 200
    assert len(upstream.requests) == 1
    assert b"\r\nX-A: a\r\n" in upstream.requests[-1]  # as aiohttp's server forwarded it


async def test_preflight_for_an_origin_with_trailing_space_is_answered_for_the_trimmed_origin(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    gw = await start_gateway(make_config(upstream.url, cors={"allow_origins": (SHOP,)}))
    raw = (
        f"OPTIONS /chat HTTP/1.1\r\nHost: x\r\nOrigin: {SHOP} \r\n"
        "Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
    ).encode()

    got = await raw_exchange(gw.port, raw)

    assert got.status == 204
    assert {n: got.headers.getall(n) for n in got.headers if n.lower().startswith("access-control-")} == {
        "Access-Control-Allow-Origin": [SHOP],
        "Access-Control-Allow-Credentials": ["true"],
        "Access-Control-Allow-Methods": ["POST"],
        "Access-Control-Allow-Headers": ["Content-Type, X-Teneo-Session"],
        "Access-Control-Max-Age": ["600"],
    }
    assert upstream.requests == []  # a preflight is the gateway's to answer


# --- the own-route check and the target's spelling -----------------------------------------------


@pytest.mark.parametrize("target", ["/_gateway/session-client%2Ejs", "/_gateway/session-client.js#x"])
async def test_client_route_is_served_whatever_its_spelling(
    start_raw_upstream: StartRawUpstream, start_gateway: StartGateway, target: str
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nupstream")
    gw = await start_gateway(make_config(upstream.url))
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    got = await raw_exchange(gw.port, raw)

    assert (got.status, got.body) == (
        200,
        client_script(),
    )  # matched on the decoded path, as aiohttp's router
    assert upstream.requests == []
