"""The admin port: /livez, /readyz from the cached upstream check, /metrics in Prometheus text."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from gateway_helpers import (
    LOOPBACK,
    Gateway,
    Recorder,
    StartGateway,
    StartUpstream,
    closed_url,
    eventually,
    make_config,
)
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import admin_app_for
from gateway.ops.admin import Readiness, check_upstream_forever

FAST_CHECKS = {"ready_check_interval": 0.05}


@pytest.fixture
def admin_for(aiohttp_client: Any) -> Any:
    async def start(gw: Gateway) -> TestClient[Any, Any]:
        return await aiohttp_client(admin_app_for(gw.app))  # shares the proxy app's metrics and readiness

    return start


async def readyz(admin: TestClient[Any, Any]) -> tuple[int, dict[str, str]]:
    response = await admin.get("/readyz")
    return response.status, await response.json()


async def test_livez(start_gateway: StartGateway, admin_for: Any) -> None:
    admin = await admin_for(await start_gateway(make_config(closed_url())))
    response = await admin.get("/livez")

    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_200_when_the_upstream_accepts_connections(
    start_upstream: StartUpstream, start_gateway: StartGateway, admin_for: Any
) -> None:
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app()), admin=FAST_CHECKS))
    admin = await admin_for(gw)

    async def ready() -> bool:
        return (await readyz(admin))[0] == 200

    await eventually(ready)
    assert await readyz(admin) == (200, {"status": "ok", "reason": "ok"})
    assert recorder.seen == []  # a TCP connect by default: no request that would open a bot session


async def test_readyz_probes_ready_path_when_configured(
    start_upstream: StartUpstream, start_gateway: StartGateway, admin_for: Any
) -> None:
    recorder = Recorder()
    gw = await start_gateway(
        make_config(
            await start_upstream(recorder.app(), prefix="/bot"),
            admin=FAST_CHECKS,
            upstream={"ready_path": "/health"},
        )
    )
    admin = await admin_for(gw)

    async def ready() -> bool:
        return (await readyz(admin))[0] == 200

    await eventually(ready)
    assert recorder.seen and {s.raw_path for s in recorder.seen} == {"/bot/health"}
    assert {s.method for s in recorder.seen} == {"GET"}


async def test_readyz_is_503_with_a_reason_when_the_upstream_is_down(
    start_gateway: StartGateway, admin_for: Any
) -> None:
    admin = await admin_for(await start_gateway(make_config(closed_url(), admin=FAST_CHECKS)))

    async def checked() -> bool:
        return "did not answer" in (await readyz(admin))[1]["reason"]

    await eventually(checked)
    status, body = await readyz(admin)
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("the upstream did not answer")


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(family: Any, suffix: str = "", **labels: str) -> float:
    values = [s.value for s in family.samples if s.name == family.name + suffix and s.labels == labels]
    assert len(values) == 1, (family.name + suffix, labels, family.samples)
    return float(values[0])


async def test_metrics_serve_prometheus_text_for_the_proxy(
    start_upstream: StartUpstream, start_gateway: StartGateway, admin_for: Any
) -> None:
    recorder = Recorder()
    gw = await start_gateway(make_config(await start_upstream(recorder.app())))
    admin = await admin_for(gw)
    assert (await gw.client.get("/a")).status == 200
    assert (await gw.client.get("/b")).status == 200
    assert (await gw.client.post("/c", data=b"x")).status == 200

    response = await admin.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    found = families(await response.text())

    requests = found["session_gateway_requests"]
    assert requests.type == "counter"
    assert sample(requests, "_total", method="GET", code="200") == 2
    assert sample(requests, "_total", method="POST", code="200") == 1
    duration = found["session_gateway_request_duration_seconds"]
    assert duration.type == "histogram"
    assert sample(duration, "_count") == 3
    assert sample(duration, "_bucket", le="+Inf") == 3
    errors = found["session_gateway_upstream_errors"]
    for reason in ("connect", "timeout", "reset", "protocol"):
        assert sample(errors, "_total", reason=reason) == 0  # present from the start, at zero
    assert sample(found["session_gateway_requests_in_flight"]) == 0
    assert sample(found["session_gateway_client_disconnects"], "_total") == 0


async def test_metrics_count_upstream_errors_by_reason(start_gateway: StartGateway, admin_for: Any) -> None:
    gw = await start_gateway(make_config(closed_url()))
    admin = await admin_for(gw)
    assert (await gw.client.get("/")).status == 502

    found = families(await (await admin.get("/metrics")).text())

    assert sample(found["session_gateway_upstream_errors"], "_total", reason="connect") == 1
    assert sample(found["session_gateway_requests"], "_total", method="GET", code="502") == 1


async def test_readiness_checker_stops_when_cancelled_at_any_point() -> None:
    """Cancel the checker at every step of a probe: it must end, or the app's cleanup waits for it forever.

    Regression: asyncio.wait_for on Python 3.11 swallowed a cancellation landing as the probe's connection
    completed, and SIGTERM then hung `session-gateway serve`.
    """

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, LOOPBACK, 0)
    config = make_config(
        f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}", admin={"ready_check_interval": 0.001}
    )
    stuck = []
    try:
        async with aiohttp.ClientSession() as client:
            for steps in range(40):
                checker = asyncio.create_task(check_upstream_forever(config, client, Readiness()))
                for _ in range(steps):
                    await asyncio.sleep(0)
                checker.cancel()
                await asyncio.wait({checker}, timeout=1.0)
                if not checker.done():
                    stuck.append(steps)
                    while not checker.done():  # clean up what the bug left running
                        checker.cancel()
                        await asyncio.wait({checker}, timeout=0.1)
    finally:
        server.close()
    assert stuck == []
