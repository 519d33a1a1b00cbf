"""The proxy port's listener: on uvloop, a burst of connections is accepted in batches, not one per loop turn."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import Any, ClassVar

import aiohttp
import pytest
import uvloop
from aiohttp import web
from gateway_helpers import LOOPBACK, Recorder, SpawnGateway, StartUpstream

from gateway.edge import listener
from gateway.edge.listener import BatchListener, GatewaySite

BURST = 100


class Counting(asyncio.Protocol):
    made = 0
    transports: ClassVar[list[asyncio.BaseTransport]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.made += 1
        Counting.transports.append(transport)


def _settle(loop: asyncio.AbstractEventLoop, server: BatchListener, clients: list[socket.socket]) -> int:
    """Run the loop until the burst is served (at most 2 s); close everything; the connections made."""

    async def served() -> None:
        for _ in range(200):
            if Counting.made >= BURST:
                return
            await asyncio.sleep(0.01)

    loop.run_until_complete(served())
    made = Counting.made
    # Closed while the loop still runs, so no transport outlives it.
    server.close()
    for transport in Counting.transports:
        transport.close()
    Counting.transports = []
    for client in clients:
        client.close()
    loop.run_until_complete(asyncio.sleep(0.05))
    return made


def _burst(port: int) -> list[socket.socket]:
    """BURST connects, all in the kernel's accept queue before the loop runs."""
    clients = []
    for _ in range(BURST):
        client = socket.socket()
        client.connect((LOOPBACK, port))
        clients.append(client)
    return clients


def _serve_burst() -> tuple[int, int]:
    """(accept callbacks, connections made) for one burst on a uvloop loop."""
    loop = uvloop.new_event_loop()
    Counting.made = 0
    calls = 0
    try:
        sock = socket.create_server((LOOPBACK, 0), backlog=1024)
        sock.setblocking(False)
        server = BatchListener(loop, sock, Counting)
        original = server._accept

        def counted() -> None:
            nonlocal calls
            calls += 1
            original()

        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), counted)
        clients = _burst(sock.getsockname()[1])

        made = _settle(loop, server, clients)
    finally:
        loop.close()
    return calls, made


def test_a_burst_is_accepted_in_a_few_loop_turns_on_uvloop() -> None:
    calls, made = _serve_burst()

    assert made == BURST
    assert calls <= 2, f"{calls} accept callbacks for {BURST} queued connections"  # uvloop alone: one each


def test_running_out_of_descriptors_pauses_accepting_then_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "_RETRY_AFTER", 0.05)
    loop = uvloop.new_event_loop()
    Counting.made = 0
    try:
        sock = socket.create_server((LOOPBACK, 0), backlog=1024)
        sock.setblocking(False)
        real_accept = sock.accept
        failures = [OSError(errno.EMFILE, "Too many open files")]
        failed_at: list[float] = []
        accepted_at: list[float] = []

        class Flaky:
            """The listening socket, whose first accept() finds no descriptor left."""

            def fileno(self) -> int:
                return sock.fileno()

            def accept(self) -> Any:
                if failures:
                    failed_at.append(time.monotonic())
                    raise failures.pop()
                conn = real_accept()
                accepted_at.append(time.monotonic())
                return conn

            def close(self) -> None:
                sock.close()

        server = BatchListener(loop, Flaky(), Counting)  # type: ignore[arg-type]
        clients = _burst(sock.getsockname()[1])

        made = _settle(loop, server, clients)
    finally:
        loop.close()

    assert not failures  # the error happened
    assert accepted_at[0] - failed_at[0] >= 0.045  # accepting paused (_RETRY_AFTER; the loop clock is in ms)
    assert made == BURST  # and accepting resumed


async def test_the_gateway_on_uvloop_answers_a_burst_of_new_connections(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway
) -> None:
    recorder = Recorder()
    gw = await spawn_gateway("serve", upstream_url=await start_upstream(recorder.app()))

    async def one(i: int) -> int:
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"{gw.url}/burst/{i}") as response,
        ):
            await response.read()
            return response.status

    statuses = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(BURST))), 30)

    assert statuses == [200] * BURST
    assert len(recorder.seen) == BURST
    assert "(event loop: uvloop, accepting in batches; " in gw.stderr()  # the BatchListener served them


@pytest.mark.parametrize(
    ("options", "batched"),
    [({}, True), ({"reuse_address": False}, False), ({"reuse_port": True}, False)],
)
def test_the_site_batches_on_uvloop_unless_asked_for_socket_options_it_cannot_honour(
    options: dict[str, bool], batched: bool
) -> None:
    """socket.create_server always sets SO_REUSEADDR and never SO_REUSEPORT: those sites keep aiohttp's."""

    async def started() -> bool:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        site = GatewaySite(runner, LOOPBACK, 0, **options)
        try:
            await site.start()
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{LOOPBACK}:{runner.addresses[0][1]}/") as response,
            ):
                assert response.status == 404  # it listens either way
            return site.batched
        finally:
            await runner.cleanup()

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(started()) is batched
    finally:
        loop.close()
