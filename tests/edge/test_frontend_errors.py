"""A bug of ours on the proxy port: the client gets an answer or a closed connection, never a hang, and the
one ERROR line logged for it names the path without the session id carried in `;jsessionid=`."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import NoReturn

import pytest
from frontend_helpers import Connect, get
from gateway_helpers import (
    Recorder,
    StartGateway,
    StartUpstream,
    make_config,
    raw_exchange,
)

import gateway.edge.front_connection
from gateway.sessions.manager import SessionManager

SECRET = "SECRETVALUE123"
TARGET = f"/chat;jsessionid={SECRET}"


def gateway_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages of ERROR records from the "gateway" logger itself."""
    return [r.getMessage() for r in caplog.records if r.name == "gateway" and r.levelno == logging.ERROR]


async def test_a_failure_while_writing_a_response_closes_the_connection_and_logs_one_redacted_line(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HttpConnection._serve's last `except Exception`: a bug while writing (here in whole_bytes) ends the
    connection at once instead of leaving the client waiting, and logs one line with the path redacted."""

    def broken_whole(*args: object) -> NoReturn:
        raise TypeError("boom")

    gw = await start_gateway(make_config(await start_upstream(Recorder().app())))
    monkeypatch.setattr(gateway.edge.front_connection, "whole_bytes", broken_whole)
    conn = await connect(gw.port)
    await conn.send(get(TARGET))
    async with asyncio.timeout(2):  # a regression leaves the connection open: this times out
        assert await conn.closed_by_server()  # EOF, and no bytes before it

    (message,) = gateway_errors(caplog)
    assert message == "failed to write the response to GET /chat;jsessionid=…"
    assert SECRET not in caplog.text


async def test_an_unexpected_exception_is_a_json_500_logged_without_the_session_id(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """unexpected_error in HttpConnection._serve: a generic internal_error body for the client, one
    "unhandled error" line with redact_path's masked path."""

    async def broken_prepare(*args: object, **kwargs: object) -> NoReturn:
        raise ZeroDivisionError("a bug of ours")

    config = make_config(await start_upstream(Recorder().app()))
    port = (await start_gateway(config)).port
    monkeypatch.setattr(SessionManager, "prepare", broken_prepare)

    got = await raw_exchange(port, get(TARGET, "Connection: close"))

    assert got.status == 500
    assert json.loads(got.body)["error"]["code"] == "internal_error"
    assert SECRET not in got.body.decode()
    (message,) = gateway_errors(caplog)
    assert message == "unhandled error on GET /chat;jsessionid=…"
    assert SECRET not in caplog.text
