"""Fixtures shared by every test: loopback upstreams, the gateway in front of them (in process or as a
subprocess) and a real redis-server. The helpers they return are in gateway_helpers.py; the fixtures of the
session, replica, front-end and hostile tests are in the helper modules named in `pytest_plugins` below."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from gateway_helpers import (
    LOOPBACK,
    Gateway,
    GatewayProcess,
    RawUpstream,
    SpawnGateway,
    StartGateway,
    StartRawUpstream,
    StartUpstream,
)
from prometheus_client import CollectorRegistry
from redis_server import RedisClusterNodes, RedisServer, running_cluster, running_redis
from served import GatewayTestServer

from gateway.app import create_app
from gateway.config import Config

# Helper modules whose fixtures every test may ask for by name (no import needed).
pytest_plugins = [
    "session_helpers",
    "replica_helpers",
    "frontend_helpers",
    "hostile_helpers",
    "hostile_checks",
    "event_receiver",
]


# --- upstreams ----------------------------------------------------------------------------------------------


@pytest.fixture
async def start_upstream(aiohttp_server: Any) -> StartUpstream:
    """start(app, prefix="", **server_kwargs) -> the upstream's base URL (http://127.0.0.1:port[prefix])."""

    async def start(app: web.Application, prefix: str = "", **server_kwargs: Any) -> str:
        server = await aiohttp_server(app, **server_kwargs)
        return f"http://{LOOPBACK}:{server.port}{prefix}"

    return start


@pytest.fixture
async def start_raw_upstream() -> AsyncIterator[StartRawUpstream]:
    """start(response_bytes) -> RawUpstream; each connection gets the response once, then is closed."""
    servers: list[asyncio.Server] = []

    async def start(response: bytes) -> RawUpstream:
        requests: list[bytes] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()  # the readiness probe: connect and go
                return
            requests.append(head)
            writer.write(response)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(on_connect, LOOPBACK, 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return RawUpstream(f"http://{LOOPBACK}:{port}", requests)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


# --- the gateway in process ---------------------------------------------------------------------------------


@pytest.fixture
async def start_gateway(aiohttp_client: Any) -> StartGateway:
    """start(config, **client_kwargs) -> Gateway; the app gets a fresh CollectorRegistry."""

    async def start(config: Config, **client_kwargs: Any) -> Gateway:
        registry = CollectorRegistry()
        app = create_app(config, registry=registry)
        client = await aiohttp_client(GatewayTestServer(app), **client_kwargs)
        return Gateway(client, app, registry, config)

    return start


# --- the gateway as a subprocess ----------------------------------------------------------------------------


@pytest.fixture
async def spawn_gateway(tmp_path: Path) -> AsyncIterator[SpawnGateway]:
    """spawn(command="serve", *args, upstream_url=..., program=argv, **env) -> a started GatewayProcess.

    Ports are free loopback ports; every process still running at teardown is killed.
    """
    procs: list[GatewayProcess] = []

    async def spawn(
        command: str = "serve", *args: str, upstream_url: str = "", program: Sequence[str] = (), **env: str
    ) -> GatewayProcess:
        if upstream_url:
            env["GATEWAY_UPSTREAM_URL"] = upstream_url
        stderr_path = tmp_path / f"gateway-{len(procs)}.stderr"
        handle = GatewayProcess.launch(stderr_path, env, command, *args, program=program)
        procs.append(handle)
        await handle.started()
        return handle

    yield spawn
    for handle in procs:
        if handle.proc.poll() is None:
            handle.proc.kill()
            handle.proc.wait(timeout=5)


# --- a real redis-server ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole run (RedisServer skips without the binary, and fails under CI=true)."""
    with running_redis() as server:
        yield server


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The shared redis-server, flushed for this test."""
    redis_server.flush()
    return redis_server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone, for tests that stop, restart or pause it."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> Iterator[RedisClusterNodes]:
    """One Redis Cluster (three masters, three replicas) for the whole run, started when first asked for."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_nodes: RedisClusterNodes) -> RedisClusterNodes:
    """The shared Redis Cluster, flushed for this test."""
    redis_cluster_nodes.flush()
    return redis_cluster_nodes
