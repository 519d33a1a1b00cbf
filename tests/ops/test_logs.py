"""Logs: one JSON object per line on stderr, an access line per request, no secrets from the URL."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import aiohttp
import pytest
from gateway_helpers import (
    GatewayProcess,
    Recorder,
    SpawnGateway,
    StartGateway,
    StartUpstream,
    assert_no_errors,
    make_config,
    raw_exchange,
)

from gateway.ops.logs import JsonFormatter

SESSION_ID = "31992FA7E1B2C3D4E5F60718"
QUERY_SECRET = "Q7TOKEN9X2Y4Z6W8"


def test_json_formatter_puts_fields_beside_the_message() -> None:
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "%s %s", ("GET", "/x"), None)
    record.fields = {"status": 200, "duration_ms": 1.5}

    line = json.loads(JsonFormatter().format(record))

    assert line["level"] == "info"
    assert line["logger"] == "gateway.access"
    assert line["message"] == "GET /x"
    assert (line["status"], line["duration_ms"]) == (200, 1.5)
    assert line["time"].endswith("+00:00")


def test_json_formatter_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())

    text = JsonFormatter().format(record)

    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]


def json_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    """Every stderr line, each of which must be one JSON object."""
    lines = [line for line in gw.stderr().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


@pytest.mark.slow
async def test_access_log_line_per_request_without_secrets(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway
) -> None:
    recorder = Recorder()
    gw = await spawn_gateway("serve", upstream_url=await start_upstream(recorder.app()))
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{gw.url}/chat;jsessionid={SESSION_ID}?userinput=hi&token={QUERY_SECRET}"
        ) as first:
            assert first.status == 200
        async with session.post(f"{gw.url}/upload", data=b"12345") as second:
            assert second.status == 200
    gw.terminate()
    assert await gw.exit_code(timeout=10) == 0

    lines = json_lines(gw)
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert [(a["method"], a["status"]) for a in access] == [("GET", 200), ("POST", 200)]
    for entry in access:
        assert {"method", "path", "status", "duration_ms", "upstream_status", "bytes_in", "bytes_out"} <= set(
            entry
        )
        assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
        assert entry["upstream_status"] == 200
        assert entry["bytes_out"] == len(b"ok")
    assert access[0]["path"] == "/chat;jsessionid=…"
    assert access[1]["path"] == "/upload"
    assert (access[0]["bytes_in"], access[1]["bytes_in"]) == (0, 5)
    stderr = gw.stderr()
    assert SESSION_ID not in stderr
    assert QUERY_SECRET not in stderr
    assert "userinput" not in stderr


@pytest.mark.slow
async def test_access_log_off(start_upstream: StartUpstream, spawn_gateway: SpawnGateway) -> None:
    gw = await spawn_gateway(
        "serve", upstream_url=await start_upstream(Recorder().app()), GATEWAY_LOG_ACCESS="false"
    )
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/x") as response:
        assert response.status == 200
    gw.terminate()
    assert await gw.exit_code(timeout=10) == 0

    lines = json_lines(gw)
    assert lines, "the gateway logs its start and stop"
    assert [line for line in lines if line["logger"] == "gateway.access"] == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw",
    [
        f"GET /chat;jsessionid={SESSION_ID} x HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET /chat?token={QUERY_SECRET} HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n".encode(),
    ],
    ids=["bad-request-line", "bad-header"],
)
async def test_a_malformed_request_is_one_info_line_without_the_request(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway, raw: bytes
) -> None:
    gw = await spawn_gateway("serve", upstream_url=await start_upstream(Recorder().app()))
    response = await raw_exchange(gw.port, raw)
    assert response.status == 400
    gw.terminate()
    assert await gw.exit_code(timeout=10) == 0

    lines = json_lines(gw)
    malformed = [line for line in lines if line["message"].startswith("refused a request")]
    assert [(line["logger"], line["level"]) for line in malformed] == [("gateway", "info")]
    assert malformed[0]["message"].startswith("refused a request from 127.0.0.1: 400 bad_request (")
    assert all("exception" not in line and line["level"] not in ("error", "critical") for line in lines)
    assert SESSION_ID not in gw.stderr()
    assert QUERY_SECRET not in gw.stderr()


async def test_client_errors_are_not_logged_as_gateway_errors(
    start_upstream: StartUpstream, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A 4xx the client caused is its business: no ERROR record from the gateway's loggers."""
    gw = await start_gateway(
        make_config(await start_upstream(Recorder().app()), upstream={"max_body_size": 10})
    )

    assert (await gw.client.post("/", data=b"x" * 100)).status == 413
    assert (
        await gw.client.post("/", data=b"x" * 5, headers={"X-Teneo-Session": "not a cookie"})
    ).status == 400
    assert_no_errors(caplog, "gateway")
