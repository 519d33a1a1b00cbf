"""The pooled upstream client: keep-alive reuse, and the stale-connection retry only when it is safe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from gateway_helpers import StartGateway, make_config

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

# start() -> (url, heads seen, connections accepted)
StartFlaky = Callable[[], Awaitable[tuple[str, list[bytes], list[int]]]]


@pytest.fixture
async def start_flaky() -> AsyncIterator[StartFlaky]:
    """An upstream that answers the first request of a connection and keeps it open, then closes it
    without answering the second: the race of a keep-alive connection the server has just given up."""
    servers: list[asyncio.Server] = []

    async def start() -> tuple[str, list[bytes], list[int]]:
        heads: list[bytes] = []
        connections: list[int] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            try:
                for served in range(2):
                    head = await reader.readuntil(b"\r\n\r\n")
                    heads.append(head)
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    await reader.readexactly(length)
                    if served == 0:
                        writer.write(OK)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the readiness probe connects and goes
            writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads, connections

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_keep_alive_connection_is_reused(
    start_flaky: StartFlaky, start_gateway: StartGateway
) -> None:
    url, heads, connections = await start_flaky()
    gw = await start_gateway(make_config(url))
    async with gw.client.get("/a") as response:
        assert response.status == 200 and await response.read() == b"ok"
    before = len(connections)
    # The second request rides the same connection: the upstream sees it there (and drops it, see below).
    async with gw.client.get("/b") as response:
        await response.read()
    assert heads[-2].startswith(b"GET /b ") or heads[-1].startswith(b"GET /b ")
    assert len(connections) - before <= 1


async def test_an_idempotent_request_that_met_a_stale_connection_is_retried_once(
    start_flaky: StartFlaky, start_gateway: StartGateway
) -> None:
    url, heads, _ = await start_flaky()
    gw = await start_gateway(make_config(url))
    async with gw.client.get("/first") as response:
        assert response.status == 200
    async with gw.client.get("/second") as response:
        assert response.status == 200 and await response.read() == b"ok"
    # Sent on the stale connection (dropped unanswered), then once more on a fresh one.
    assert [h.split(b" ")[1] for h in heads if h.startswith(b"GET /second")] == [b"/second", b"/second"]
    assert gw.metric("session_gateway_upstream_errors_total", reason="reset") == 0


async def test_a_post_that_met_a_stale_connection_is_not_repeated(
    start_flaky: StartFlaky, start_gateway: StartGateway
) -> None:
    url, heads, _ = await start_flaky()
    gw = await start_gateway(make_config(url))
    async with gw.client.post("/first", data=b"x=1") as response:
        assert response.status == 200
    async with gw.client.post("/second", data=b"x=2") as response:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_unavailable"
    # The bot may have acted on it: a POST is never sent twice.
    assert sum(1 for h in heads if h.startswith(b"POST /second")) == 1
    assert gw.metric("session_gateway_upstream_errors_total", reason="reset") == 1
