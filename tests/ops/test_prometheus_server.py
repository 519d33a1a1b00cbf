"""A real Prometheus scrapes the gateway during a scripted scenario and runs every dashboard and alert query.

The gateway runs as a real server (AppRunner and TCPSite on loopback) in front of the demo bot; Prometheus
(Debian package `prometheus`) scrapes its admin port every second and evaluates deploy/prometheus/alerts.yaml
every second. Skipped without `prometheus` on a laptop; a failure under CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest_tools import executable
from gateway_helpers import LOOPBACK, free_port
from prometheus_client import CollectorRegistry
from promql import JOB, PROMETHEUS_HINT, RULES, all_queries, concrete, yaml
from session_helpers import make_session_config
from traffic import (
    ACTIVE,
    ENDED,
    MAX_SESSIONS,
    REJECTED,
    SESSION_OPTIONS,
    STARTED,
    UPSTREAM_ERRORS,
    Traffic,
    bot_app,
    run,
)

from gateway import __version__
from gateway.app import admin_app_for, create_app
from gateway.edge.frontend import GatewayRunner
from gateway.ops import metrics as m

SCRAPE_INTERVAL = 1  # seconds; rules are evaluated as often

# Queries that must come back empty in this scenario, and why. Everything else must return data.
EMPTY = {
    "rule SessionGatewayUpstreamSlowFirstByte": "the demo bot answers in milliseconds, far under the 5 s SLO",
    "rule SessionGatewaySessionsEvicted": 'on_full = "reject": nothing is evicted',
    "rule SessionGatewayExpirySweepStalled": "the sweeper runs every 0.2 s",
    "rule SessionGatewayStoreDown": "the memory store is always up",
    "rule SessionGatewayStoreErrors": "the memory store never fails",
    "rule SessionGatewayTargetDown": "the gateway answers every scrape",
    "rule SessionGatewayUpstreamBusy": "every request gets a bot connection at once",
    "rule SessionGatewayClientTimeouts": "every client sends and reads promptly",
    "rule SessionGatewayConnectionsRejected": "a handful of connections, far under listen.max_connections",
    "rule SessionGatewayEventsDropped": "events.sink is none here: nothing is delivered, nothing dropped",
    "rule SessionGatewayEventsLagging": "events.sink is none here: nothing is delivered late",
    "panel 'Wait from interim to pick-up' A": "no bot here is slower than deferred.after (off)",
    "panel 'Wait from interim to pick-up' B": "no bot here is slower than deferred.after (off)",
}


@dataclass(slots=True)
class Prometheus:
    """A Prometheus server on loopback and its HTTP API."""

    url: str
    http: aiohttp.ClientSession

    async def query(self, expr: str) -> dict[str, Any]:
        """The `data` of an instant query; fails the test on a parse or evaluation error."""
        async with self.http.get(f"{self.url}/api/v1/query", params={"query": expr}) as response:
            body: dict[str, Any] = await response.json()
        assert body["status"] == "success", f"{expr}\n{body.get('errorType')}: {body.get('error')}"
        data: dict[str, Any] = body["data"]
        return data

    async def vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = await self.query(expr)
        assert data["resultType"] in ("vector", "scalar"), (expr, data["resultType"])
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(sample["metric"], float(sample["value"][1])) for sample in data["result"]]

    async def by(self, label: str, expr: str) -> dict[str, float]:
        return {labels.get(label, ""): value for labels, value in await self.vector(expr)}

    async def scalar(self, expr: str) -> float:
        result = await self.vector(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return result[0][1]

    async def scrapes_since(self, since: float) -> int:
        window_ms = max(1, int((time.time() - since) * 1000))
        result = await self.vector(f'count_over_time(up{{job="{JOB}"}}[{window_ms}ms])')
        return int(result[0][1]) if result else 0

    async def wait_for_scrapes(self, count: int, since: float, timeout: float = 15.0) -> None:
        """Until Prometheus has scraped the gateway `count` times since `since` (Unix time)."""
        deadline = time.monotonic() + timeout
        while (seen := await self.scrapes_since(since)) < count:
            assert time.monotonic() < deadline, f"{seen} of {count} scrapes within {timeout}s"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def gateway_server(registry: CollectorRegistry) -> AsyncIterator[tuple[str, int]]:
    """The demo bot and the gateway in front of it, served on loopback: (proxy URL, admin port)."""
    runners = []
    try:
        bot = web.AppRunner(bot_app(), access_log=None)
        runners.append(bot)
        await bot.setup()
        await web.TCPSite(bot, LOOPBACK, 0).start()
        config = make_session_config(f"http://{LOOPBACK}:{bot.addresses[0][1]}", session=SESSION_OPTIONS)
        app = create_app(config, registry=registry)
        for application, runner_class in ((app, GatewayRunner), (admin_app_for(app), web.AppRunner)):
            runner = runner_class(application, access_log=None, shutdown_timeout=1.0)
            runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, LOOPBACK, 0).start()
        yield f"http://{LOOPBACK}:{runners[1].addresses[0][1]}", runners[2].addresses[0][1]
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


@contextlib.asynccontextmanager
async def prometheus_server(tmp_path: Path, target_port: int) -> AsyncIterator[Prometheus]:
    """`prometheus` scraping 127.0.0.1:<target_port> as job session-gateway, with alerts.yaml loaded."""
    binary = executable("prometheus", PROMETHEUS_HINT)
    interval = f"{SCRAPE_INTERVAL}s"
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"{LOOPBACK}:{target_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://{LOOPBACK}:{port}"
            deadline = time.monotonic() + 15
            while True:
                assert proc.poll() is None, f"prometheus exited with {proc.returncode}:\n{log.read_text()}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/-/ready") as response:
                        if response.status == 200:
                            break
                assert time.monotonic() < deadline, f"prometheus not ready within 15 s:\n{log.read_text()}"
                await asyncio.sleep(0.1)
            yield Prometheus(url, http)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.slow
async def test_every_dashboard_and_alert_query_against_a_scraped_gateway(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    async with (
        gateway_server(registry) as (gateway_url, admin_port),
        prometheus_server(tmp_path, admin_port) as prometheus,
        aiohttp.ClientSession(base_url=gateway_url, cookie_jar=aiohttp.DummyCookieJar()) as client,
    ):
        # One scrape before any traffic, so every rate() and increase() sees the scenario's counts rise.
        await prometheus.wait_for_scrapes(1, since=time.time() - 60)
        traffic = Traffic(client, registry)

        async def scraped() -> None:  # phase 2 must land in later scrapes than phase 1
            await prometheus.wait_for_scrapes(1, since=time.time())

        await run(traffic, between=scraped)
        await prometheus.wait_for_scrapes(2, since=time.time())

        # Every query parses and evaluates; all but EMPTY return data (rules need an evaluation cycle
        # after the last scrape, so poll, bounded). A NaN answer is a 0/0 the dashboard would show as a gap.
        queries = {where: concrete(expr) for where, expr in all_queries()}
        assert set(EMPTY) <= set(queries), f"EMPTY names unknown queries: {set(EMPTY) - set(queries)}"
        deadline = time.monotonic() + 10
        while True:
            results = {where: await prometheus.vector(expr) for where, expr in queries.items()}
            missing = sorted(w for w, r in results.items() if not r and w not in EMPTY)
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert not missing, f"no data: {missing}"
        unexpected = sorted(w for w in EMPTY if results[w])
        assert not unexpected, f"expected empty in this scenario: {unexpected}"
        nan = sorted(w for w, r in results.items() if any(math.isnan(v) for _, v in r))
        assert not nan, f"NaN answers: {nan}"

        # Every rule evaluates without error on real series (vector matching errors only show here).
        async with prometheus.http.get(f"{prometheus.url}/api/v1/rules") as response:
            groups = (await response.json())["data"]["groups"]
        unhealthy = [
            (r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"
        ]
        assert not unhealthy, unhealthy
        assert sum(len(g["rules"]) for g in groups) == sum(1 for w in queries if w.startswith("rule "))

        # The values the scenario implies.
        started = await prometheus.by("reason", "sum by (reason) (session_gateway_sessions_started_total)")
        assert started == {r: STARTED.get(r, 0) for r in m.START_REASONS}
        ended = await prometheus.by("reason", "sum by (reason) (session_gateway_sessions_ended_total)")
        assert ended == {r: ENDED.get(r, 0) for r in m.END_REASONS}
        errors = await prometheus.by("reason", "sum by (reason) (session_gateway_upstream_errors_total)")
        assert errors == {r: UPSTREAM_ERRORS.get(r, 0) for r in m.UPSTREAM_ERROR_REASONS}
        carriers = await prometheus.by("carrier", "sum by (carrier) (session_gateway_session_carrier_total)")
        assert carriers == {c: traffic.carriers[c] for c in m.CARRIERS}
        assert traffic.carriers["header"] and traffic.carriers["cookie"] and traffic.carriers["path"]
        codes = await prometheus.by("code", "sum by (code) (session_gateway_requests_total)")
        assert codes == {
            code: sum(n for (_, c), n in traffic.requests.items() if c == code) for code in codes
        }
        assert {"200", "400", "502", "503"} <= set(codes)
        assert await prometheus.scalar("sum(session_gateway_sessions_rejected_total)") == REJECTED
        assert await prometheus.scalar("sum(session_gateway_sessions_active)") == ACTIVE
        assert await prometheus.scalar("max(session_gateway_sessions_active_max)") == ACTIVE
        assert await prometheus.scalar("max(session_gateway_sessions_limit)") == MAX_SESSIONS
        assert await prometheus.scalar("sum(session_gateway_session_requests_count)") == sum(ENDED.values())
        versions = await prometheus.by("version", "session_gateway_build_info")
        assert versions == {__version__: 1}

        # The dashboard's own answers where the scenario fixes them.
        assert results["panel 'Active sessions' A"][0][1] == ACTIVE
        assert results["panel 'Session cap used' A"][0][1] == 1.0
        assert results["variable job"][0][0]["job"] == JOB
        total = sum(traffic.carriers.values())
        blocked = total - traffic.carriers["cookie"] - traffic.carriers["none"]
        assert results["panel 'Cookie-blocked clients' A"][0][1] == pytest.approx(blocked / total, rel=1e-6)
        started_rates = {labels["reason"]: v for labels, v in results["panel 'Sessions started by reason' A"]}
        assert {r for r, v in started_rates.items() if v > 0} == set(STARTED)
        ended_rates = {labels["reason"]: v for labels, v in results["panel 'Sessions ended by reason' A"]}
        assert {r for r, v in ended_rates.items() if v > 0} == set(ENDED)
        # The three alerts this scenario provokes: 5xx ratio, the upstream reset, and the cap.
        assert results["rule SessionGatewayHighErrorRate"][0][1] > 0.05
        assert results["rule SessionGatewayUpstreamErrors"][0][0]["reason"] == "reset"
        assert results["rule SessionGatewaySessionsNearLimit"][0][1] == 1.0
        assert results["rule SessionGatewaySessionsRejected"][0][1] > 0
