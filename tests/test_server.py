"""`session-gateway serve`: SIGTERM drains in-flight requests and ends open streams; startup objects are frozen."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal

import aiohttp
import pytest
from aiohttp import web
from gateway_helpers import GatewayProcess, SpawnGateway, StartUpstream, eventually, wait

from gateway.server import raise_file_limit

pytestmark = pytest.mark.slow

SHUTDOWN_TIMEOUT = 5.0
SERVE_ENV = {
    "GATEWAY_LISTEN_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    "GATEWAY_ADMIN_READY_CHECK_INTERVAL": "0.05",
}


async def readyz_status(gw: GatewayProcess) -> int | None:
    """The /readyz status, or None when the admin port no longer accepts connections."""
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{gw.admin_url}/readyz") as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return None


async def proxy_refuses_connections(gw: GatewayProcess) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    except OSError:
        return True
    writer.close()
    return False


async def test_sigterm_lets_an_in_flight_request_finish(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await wait(release.wait(), timeout=10)  # answers only once the test has seen the drain begin
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    gw = await spawn_gateway("serve", upstream_url=await start_upstream(app), **SERVE_ENV)

    async def ready() -> bool:
        return await readyz_status(gw) == 200

    await eventually(ready)

    async with aiohttp.ClientSession() as session:

        async def fetch() -> tuple[int, str]:
            async with session.get(f"{gw.url}/slow") as response:
                return response.status, await response.text()

        in_flight = asyncio.create_task(fetch())
        try:
            await wait(arrived.wait())
            gw.terminate()

            async def draining() -> bool:
                return await readyz_status(gw) in (503, None)

            await eventually(draining)
            await eventually(lambda: proxy_refuses_connections(gw))  # no new requests during the drain
            assert not in_flight.done()
        finally:
            release.set()
        assert await wait(in_flight) == (200, "finished")

    assert await gw.exit_code(timeout=SHUTDOWN_TIMEOUT) == 0


async def test_sigterm_ends_an_open_sse_stream(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway
) -> None:
    release = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: hello\n\n")
        await wait(release.wait(), timeout=10)  # a stream that would go on and on
        return response

    app = web.Application()
    app.router.add_get("/events", events)
    gw = await spawn_gateway("serve", upstream_url=await start_upstream(app), **SERVE_ENV)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/events") as response:
            assert response.status == 200
            assert await wait(response.content.readuntil(b"\n\n")) == b"data: hello\n\n"
            gw.terminate()
            assert await wait(response.content.read()) == b""  # a clean end of the stream, not an error
            assert response.content.at_eof()
    finally:
        release.set()

    assert await gw.exit_code(timeout=SHUTDOWN_TIMEOUT) == 0
    assert "Traceback" not in gw.stderr()


async def test_serve_freezes_what_startup_built_before_taking_traffic() -> None:
    # In process: the cyclic GC's permanent generation is this process's own state.
    from gateway.config import load_config
    from gateway.server import serve

    config = load_config(
        None,
        {
            "GATEWAY_LISTEN_HOST": "127.0.0.1",
            "GATEWAY_LISTEN_PORT": "0",
            "GATEWAY_ADMIN_HOST": "127.0.0.1",
            "GATEWAY_ADMIN_PORT": "0",
            "GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9",
        },
    )
    frozen_when_listening: list[int] = []

    async def started(runner: web.AppRunner, admin: web.AppRunner) -> None:
        frozen_when_listening.append(gc.get_freeze_count())
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a normal shutdown

    previous = signal.getsignal(signal.SIGTERM)
    try:
        await wait(serve(config, on_started=started), timeout=30)
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
        signal.signal(signal.SIGTERM, previous)  # serve leaves the default action behind
    assert frozen_when_listening and frozen_when_listening[0] > 10_000


def test_the_file_limit_is_raised_to_the_hard_limit() -> None:
    """Each connection takes a descriptor: a soft RLIMIT_NOFILE of 1,024 would cap the gateway far below
    listen.max_connections, so serve() raises it to the hard limit, as nginx's worker_rlimit_nofile does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # nothing to raise to: the soft limit stays as it is
        assert raise_file_limit() == soft
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
        return
    lowered = min(soft, hard, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        assert raise_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_startup_line_says_how_many_connections_and_descriptors(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway
) -> None:
    gw = await spawn_gateway("serve", upstream_url=await start_upstream(web.Application()))
    gw.terminate()
    assert await gw.exit_code(timeout=10) == 0
    # The child inherits our limits and raises its soft one to the hard one, when that is finite.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = soft if hard == resource.RLIM_INFINITY else hard
    assert f"up to 10000 connections, {files} file descriptors)" in gw.stderr()
