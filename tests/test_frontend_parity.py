# ruff: noqa: F811  (pytest fixtures imported from frontend_helpers are redefined as parameters)
"""The two lanes of the proxy port answer alike: each case runs on the fast front end and on aiohttp's own
server (the same app), from a review that found them differing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from conftest import (
    StartGateway,
    StartRawUpstream,
    StartReference,
    StartUpstream,
    make_config,
    raw_exchange,
)
from frontend_helpers import (  # noqa: F401 - fixtures are used by name
    Connect,
    MiB,
    StartLanes,
    connect,
    only_fast_connection,
    start_lanes,
)
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.client import client_script

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


async def test_fast_lane_whole_responses_respect_back_pressure(
    start_upstream: StartUpstream, start_gateway: StartGateway, connect: Connect
) -> None:
    gw = await start_gateway(make_config(await _sixty_kib_upstream(start_upstream)))
    await _pipeline_without_reading(connect, gw.port, 300)  # 300 x 60 KiB = 18 MiB of answers
    await asyncio.sleep(1.0)  # the client reads nothing
    conn = only_fast_connection(gw)
    assert conn.transport is not None
    buffered = conn.transport.get_write_buffer_size()
    assert buffered < MiB, (
        f"{buffered} bytes buffered for a client that reads nothing"
    )  # was ~14 MiB before _serve awaited drain


async def test_control_aiohttp_lane_whole_responses_respect_back_pressure(
    start_upstream: StartUpstream, aiohttp_server: Any, connect: Connect
) -> None:
    server = await aiohttp_server(
        create_app(make_config(await _sixty_kib_upstream(start_upstream)), registry=CollectorRegistry())
    )
    await _pipeline_without_reading(connect, server.port, 300)
    await asyncio.sleep(1.0)
    (conn,) = server.runner.server.connections
    buffered = conn.transport.get_write_buffer_size()
    assert buffered < MiB  # observed ~100 KiB: aiohttp drains after each response


# --- trailing whitespace of header values ---------------------------------------


async def test_trailing_whitespace_of_header_values_is_not_forwarded(
    start_raw_upstream: StartRawUpstream, start_lanes: StartLanes
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    config = make_config(upstream.url)
    gw, reference = await start_lanes(config)
    raw = b"GET /r HTTP/1.1\r\nHost: x\r\nX-A: a \t\r\nConnection: close\r\n\r\n"

    assert (await raw_exchange(reference, raw)).status == 200
    assert b"\r\nX-A: a\r\n" in upstream.requests[-1]  # aiohttp's lane
    assert (await raw_exchange(gw.port, raw)).status == 200
    assert len(upstream.requests) == 2  # the fast lane forwarded too: the check below reads its request
    assert b"\r\nX-A: a\r\n" in upstream.requests[-1]


async def test_preflight_answer_is_the_same_in_both_lanes_for_an_origin_with_trailing_space(
    start_raw_upstream: StartRawUpstream, start_lanes: StartLanes
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    config = make_config(upstream.url, cors={"allow_origins": (SHOP,)})
    gw, reference = await start_lanes(config)
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
    start_lanes: StartLanes,
    target: str,
) -> None:
    upstream = await start_raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nupstream")
    config = make_config(upstream.url)
    gw, reference = await start_lanes(config)
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    expected = await raw_exchange(reference, raw)
    assert (expected.status, expected.body) == (200, client_script())  # aiohttp's router serves the JS client
    got = await raw_exchange(gw.port, raw)
    assert (got.status, got.body) == (expected.status, expected.body)
