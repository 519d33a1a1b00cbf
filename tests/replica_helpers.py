"""Helpers for the scale-out tests: gateway replicas sharing a redis-server, bot replicas, subprocesses."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest_tools import REPO
from gateway_helpers import LOOPBACK, GatewayProcess
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer
from session_helpers import P, Rig, SeenByBot, demo_bot_app, make_session_config, start_rig

from gateway.config import Config

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
    config = make_session_config(url if isinstance(url, str) else "http://127.0.0.1:1", session=session)
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
    seen: list[SeenByBot]

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
            seen: list[SeenByBot] = []
            server = await aiohttp_server(demo_bot_app(clock, seen, delay=(delays or {}).get(f"b{i}", 0.0)))
            bots.append(BotReplica(f"b{i}", server, seen))
        return bots

    return start


def total(nodes: Sequence[Rig], name: str, **labels: str) -> float:
    """A metric summed over gateway replicas (missing samples count 0)."""
    return sum(node.metric(name, **labels) or 0.0 for node in nodes)


def affinity_of(reply_headers: Any) -> str:
    """The affinity value from X-Gateway-Session (`GatewayAffinity=<value>`)."""
    pair = reply_headers["X-Gateway-Session"]
    name, _, value = pair.partition("=")
    assert name == "GatewayAffinity" and value, pair
    return str(value)


# --- gateways as subprocesses -------------------------------------------------------------------------


class MeteredGatewayProcess(GatewayProcess):
    """A gateway replica as a subprocess (gateway_helpers.GatewayProcess) that can also read its /metrics."""

    __slots__ = ()

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
) -> list[MeteredGatewayProcess]:
    """Start `count` gateway processes at once; return when every admin port answers /livez."""
    procs = [
        MeteredGatewayProcess.launch(
            tmp_path / f"gateway-{i}.stderr", {"GATEWAY_LOG_ACCESS": "false", **env}, cwd=REPO
        )
        for i in range(count)
    ]
    deadline = time.monotonic() + timeout
    for gw in procs:
        await gw.started(max(0.0, deadline - time.monotonic()))
    return procs


def stop_gateways(procs: Sequence[MeteredGatewayProcess]) -> None:
    for gw in procs:
        if gw.proc.poll() is None:
            gw.terminate()
    for gw in procs:
        try:
            gw.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            gw.proc.wait(timeout=5)
