"""What the hostile tests share: the edge config they run with, the `start_edge` fixture (a raw bot behind a
gateway with that config), and how they read a refusal or a metric."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from frontend_helpers import Conn, Connect, get
from gateway_helpers import Gateway, StartGateway, make_config
from hostile_helpers import Action, RawAnswer, RawBot, StartRawBot, read_answer

from gateway.config import Config
from gateway.ops.metrics import UPSTREAM_ERROR_REASONS

# Edge timeouts short enough for a fast suite; each test shortens the one it is about.
EDGE = {"header_timeout": 1.0, "body_timeout": 1.0, "keepalive_timeout": 5.0, "send_timeout": 1.0}
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: gw.example\r\n\r\n"
STRAY = b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\nContent-Length: 0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def edge_config(url: str, **sections: dict[str, Any]) -> Config:
    """make_config with the short EDGE timeouts, then the test's own overrides."""
    return make_config(url, **{**sections, "listen": {**EDGE, **sections.get("listen", {})}})


StartEdge = Callable[..., Awaitable[tuple[RawBot, Gateway]]]


@pytest.fixture
def start_edge(start_raw_bot: StartRawBot, start_gateway: StartGateway) -> StartEdge:
    """start(*script, default=echo, **sections) -> (a RawBot, the gateway before it with edge_config(**sections))."""

    async def start(
        *script: Action, default: Action | None = None, **sections: dict[str, Any]
    ) -> tuple[RawBot, Gateway]:
        bot = await start_raw_bot(*script, default=default)
        return bot, await start_gateway(edge_config(bot.url, **sections))

    return start


def error_code(answer: RawAnswer) -> str:
    error = json.loads(answer.body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    code: str = error["code"]
    return code


def timeouts(gw: Gateway, phase: str) -> float:
    return gw.metric("session_gateway_client_timeouts_total", phase=phase)


def upstream_errors(gw: Gateway) -> dict[str, float]:
    return {r: gw.metric("session_gateway_upstream_errors_total", reason=r) for r in UPSTREAM_ERROR_REASONS}


NO_UPSTREAM_ERRORS = dict.fromkeys(UPSTREAM_ERROR_REASONS, 0.0)


async def refused_and_closed(conn: Conn, status: int, code: str) -> RawAnswer:
    """The gateway's refusal: the status, the error code, `Connection: close`, then the connection ends."""
    answer = await read_answer(conn)
    assert answer.status_line.startswith(f"HTTP/1.1 {status} ")
    assert error_code(answer) == code
    assert answer.headers.getall("Connection") == ["close"]
    assert await conn.closed_by_server()
    return answer


async def healthy(gw: Gateway, connect: Connect) -> None:
    """The gateway still serves a fresh connection."""
    conn = await connect(gw.port)
    await conn.send(get("/healthy"))
    answer = await read_answer(conn)
    assert (answer.status, answer.body) == (200, b"GET /healthy ")


def head_of(target: str, framing: str, *extra: str) -> bytes:
    """A POST head for a 10-byte body, framed by Content-Length or chunked."""
    frame = "Content-Length: 10" if framing == "content-length" else "Transfer-Encoding: chunked"
    return "".join(
        [f"POST {target} HTTP/1.1\r\nHost: gw.example\r\n{frame}\r\n", *(f"{h}\r\n" for h in extra), "\r\n"]
    ).encode()


def framed(body: bytes, framing: str) -> bytes:
    return body if framing == "content-length" else b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)


FRAMINGS = ["content-length", "chunked"]
