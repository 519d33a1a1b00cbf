"""The exception tree and the one middleware that renders it as {"error": {"code", "message"}}."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web

from gateway.errors import (
    BadRequest,
    BadSessionCarrier,
    BodyTooLarge,
    ConfigError,
    GatewayError,
    SessionCapacity,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_middleware,
)


async def client_raising(aiohttp_client: Any, exc: BaseException) -> Any:
    async def handle(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handle)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (BadRequest("Bad."), 400, "bad_request"),
        (BadSessionCarrier("Bad carrier."), 400, "bad_session_header"),
        (BodyTooLarge("Too large."), 413, "body_too_large"),
        (UpstreamUnavailable("Down."), 502, "upstream_unavailable"),
        (UpstreamTimeout("Slow."), 504, "upstream_timeout"),
        (SessionCapacity("Full."), 503, "session_capacity"),
        (StoreUnavailable("Store down."), 503, "store_unavailable"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_gateway_errors_render_as_json(
    aiohttp_client: Any, error: GatewayError, status: int, code: str
) -> None:
    client = await client_raising(aiohttp_client, error)
    response = await client.get("/")

    assert response.status == status
    assert response.content_type == "application/json"
    assert await response.json() == {"error": {"code": code, "message": error.message}}


async def test_aiohttp_http_errors_render_as_json(aiohttp_client: Any) -> None:
    client = await client_raising(aiohttp_client, web.HTTPNotFound())
    response = await client.get("/")

    assert response.status == 404
    assert await response.json() == {"error": {"code": "not_found", "message": "Not Found."}}


async def test_redirects_pass_through(aiohttp_client: Any) -> None:
    client = await client_raising(aiohttp_client, web.HTTPFound("/elsewhere"))
    response = await client.get("/", allow_redirects=False)

    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"


async def test_an_unexpected_exception_is_one_logged_500_without_details(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await client_raising(aiohttp_client, RuntimeError("database password is hunter2"))
    response = await client.get("/")

    assert response.status == 500
    body = await response.json()
    assert body["error"]["code"] == "internal_error"
    assert "hunter2" not in str(body)
    records = [r for r in caplog.records if r.name == "gateway" and r.levelno == logging.ERROR]
    assert len(records) == 1
    assert records[0].exc_info is not None


def test_config_error_is_a_value_error_naming_its_key() -> None:
    error = ConfigError("listen.port", "expected a port 0-65535, got 70000")

    assert isinstance(error, ValueError)
    assert isinstance(error, GatewayError)
    assert error.key == "listen.port"
    assert str(error) == "listen.port: expected a port 0-65535, got 70000"
