"""Helpers for the scale-out tests: gateway replicas sharing a redis-server, bot replicas, subprocesses."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from session_helpers import LOOPBACK, P, Rig, Seen, demo_bot_app, make_config, start_rig

from gateway.config import Config
from tests.redis_server import RedisServer, free_port

Clock = Callable[[], float]


def gateway_config(
    url: str | Sequence[str],
    redis: RedisServer | None = None,
    *,
    upstream: dict[str, Any] | None = None,
    **session: Any,
) -> Config:
    """The test gateway's config: one bot URL or `name=url` replicas; the Redis store when given one."""
    if redis is not None:
        session = {"store": "redis", "redis_url": redis.url, "redis_timeout": 1.0, **session}
    session = {"secret": "shared-test-secret", **session}  # replicas share one, as the README asks
    config = make_config(url if isinstance(url, str) else "http://127.0.0.1:1", session=session)
    up = dict(upstream or {})
    if not isinstance(url, str):
        up["urls"] = tuple(url)
        up["url"] = "http://127.0.0.1:8000"  # the default: urls and url are exclusive
    return dataclasses.replace(config, upstream=dataclasses.replace(config.upstream, **up)) if up else config


StartNode = Callable[..., Awaitable[Rig]]


@pytest.fixture
def start_node(aiohttp_client: Any) -> StartNode:
    """start(config, clock=time.time) -> a gateway replica (a Rig) with its own registry and store."""

    async def start(config: Config, clock: Clock = time.time) -> Rig:
        return await start_rig(aiohttp_client, config, clock)  # type: ignore[arg-type]

    return start


@dataclass(slots=True)
class BotReplica:
    """A demo bot replica on loopback: its name, the requests it saw, and its server (to kill it)."""

    name: str
    server: TestServer
    seen: list[Seen]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.port}"

    @property
    def spec(self) -> str:
        return f"{self.name}={self.url}"

    def session_ids(self) -> set[str]:
        """The JSESSIONIDs this bot was asked to continue."""
        return {v for s in self.seen for n, v in s.cookies if n == "JSESSIONID"}


StartBots = Callable[..., Awaitable[list[BotReplica]]]


@pytest.fixture
def start_bots(aiohttp_server: Any) -> StartBots:
    """start(n, clock=time.monotonic, delays={name: seconds}) -> n demo bot replicas named b1..bn."""

    async def start(
        n: int, clock: Clock = time.monotonic, delays: dict[str, float] | None = None
    ) -> list[BotReplica]:
        bots = []
        for i in range(1, n + 1):
            seen: list[Seen] = []
            server = await aiohttp_server(demo_bot_app(clock, seen, delay=(delays or {}).get(f"b{i}", 0.0)))
            bots.append(BotReplica(f"b{i}", server, seen))
        return bots

    return start


def total(nodes: Sequence[Rig], name: str, **labels: str) -> float:
    """A metric summed over gateway replicas (missing samples count 0)."""
    return sum(node.metric(name, **labels) or 0.0 for node in nodes)


async def poll(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `check` (sync or async) every 10 ms until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s (last value {result!r})")
        await asyncio.sleep(0.01)


def affinity_of(reply_headers: Any) -> str:
    """The affinity value from X-Gateway-Session (`GatewayAffinity=<value>`)."""
    pair = reply_headers["X-Gateway-Session"]
    name, _, value = pair.partition("=")
    assert name == "GatewayAffinity" and value, pair
    return str(value)


# --- the redis-server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(shared_redis: RedisServer) -> RedisServer:
    """The module's redis-server, flushed for this test."""
    shared_redis.flush()
    return shared_redis


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone (outage tests stop and start it)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


# --- gateways as subprocesses -------------------------------------------------------------------------


@dataclass(slots=True)
class GatewayProcess:
    """`python -m gateway serve` on loopback ports, stderr captured to a file."""

    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    async def metrics(
        self, session: aiohttp.ClientSession
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        async with session.get(self.admin_url + "/metrics") as response:
            text = await response.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def metric(self, session: aiohttp.ClientSession, name: str, **labels: str) -> float:
        """A sample value; 0.0 for a label set not seen yet, an error for a name /metrics never shows."""
        samples = await self.metrics(session)
        if not any(key[0] == P + name for key in samples):
            raise AssertionError(f"no metric sample is named {P + name!r}")
        return samples.get((P + name, tuple(sorted(labels.items()))), 0.0)


async def spawn_gateways(
    tmp_path: Path, count: int, env: dict[str, str], timeout: float = 15.0
) -> list[GatewayProcess]:
    """Start `count` gateway processes at once; return when every admin port answers /livez."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    procs = []
    for i in range(count):
        port, admin_port = free_port(), free_port()
        environ = {
            **base,
            "GATEWAY_LISTEN_HOST": LOOPBACK,
            "GATEWAY_LISTEN_PORT": str(port),
            "GATEWAY_ADMIN_HOST": LOOPBACK,
            "GATEWAY_ADMIN_PORT": str(admin_port),
            "GATEWAY_LOG_ACCESS": "false",
            **env,
        }
        stderr_path = tmp_path / f"gateway-{i}.stderr"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"],
                env=environ,
                cwd=Path(__file__).resolve().parent.parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        procs.append(GatewayProcess(proc, port, admin_port, stderr_path))
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        for gw in procs:
            while True:
                if gw.proc.poll() is not None:
                    pytest.fail(f"a gateway exited with {gw.proc.returncode}:\n{gw.stderr()}")
                try:
                    async with session.get(gw.admin_url + "/livez") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"a gateway did not start within {timeout}s:\n{gw.stderr()}")
                await asyncio.sleep(0.05)
    return procs


def stop_gateways(procs: Sequence[GatewayProcess]) -> None:
    for gw in procs:
        if gw.proc.poll() is None:
            gw.proc.send_signal(signal.SIGTERM)
    for gw in procs:
        try:
            gw.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            gw.proc.wait(timeout=5)
