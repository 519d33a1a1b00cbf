"""A seeded fuzz of raw requests against the proxy port (issue 16), in front of a recording bot.

The cases come from bench/fuzzing.py (bench/fuzz.py runs 100,000 of them). What bench/fuzz_runner.py checks
as it reads: every answer readable as HTTP/1.1, no 5xx but 505, an error in the gateway's JSON, a bot answer
byte for byte; and after the run, every request the bot answered delivered once, to the connection that sent
it, and nothing of a refused request at the bot. Here also: no ERROR log line, and the gateway still serves a
plain request afterwards. Gateway bugs the fuzz found (WebSocket handshakes it handed over unjudged) are
pinned below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from gateway_helpers import (
    LOOPBACK,
    StartGateway,
    StartUpstream,
    assert_no_errors,
    make_config,
    raw_exchange,
    wait,
)

from bench.fuzz_runner import SEQ_HEADER, Bot, Runner
from bench.fuzzing import SETTINGS

SEED = 16
CASES = 5000
SECONDS = 30.0  # no case starts after this, however many are left
HANDSHAKE = (
    b"Host: gw.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def test_fuzzed_requests_break_nothing(
    start_upstream: StartUpstream, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bot = Bot()
    gw = await start_gateway(make_config(await start_upstream(bot.app()), **SETTINGS))
    runner = Runner(gw.port, bot, seed=SEED)

    tally = await runner.run(CASES, concurrency=24, seconds=SECONDS)
    runner.verify()

    print(tally.report(bot))  # shown with -s, or on failure
    assert tally.cases >= min(CASES, 1000), "the run is too slow to say much"
    assert not tally.anomalies, tally.report(bot)
    assert tally.answers > tally.cases / 2 and tally.probes > tally.cases / 10  # the fuzz reached the bot
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    if len(errors) > tally.known_error_lines():  # those a known issue logs are no news
        assert_no_errors(caplog)
    after = await raw_exchange(
        gw.port, b"GET /after HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n"
    )
    assert after.status == 200 and SEQ_HEADER in after.headers


async def _exchange(port: int, data: bytes) -> bytes:
    """Bytes in, everything the gateway sends until it closes (or goes quiet for a second)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(data)
    got = b""
    with contextlib.suppress(TimeoutError):
        while chunk := await asyncio.wait_for(reader.read(65536), 1.0):
            got += chunk
    writer.close()
    return got


async def test_an_http10_websocket_handshake_is_a_plain_request(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    bot = Bot()
    gw = await start_gateway(make_config(await start_upstream(bot.app()), **SETTINGS))

    got = await wait(_exchange(gw.port, b"GET /c/1/chat HTTP/1.0\r\n" + HANDSHAKE + b"\r\n"))

    assert got.startswith(b"HTTP/1.1 200 "), got[:60]
    assert [seen.upgraded for seen in bot.seen] == [False]


@pytest.mark.parametrize(
    "handshake",
    [
        HANDSHAKE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
        HANDSHAKE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Key: abc"),
        HANDSHAKE.replace(b"Sec-WebSocket-Version: 13\r\n", b""),
    ],
    ids=["no-key", "short-key", "no-version"],
)
async def test_an_invalid_websocket_handshake_never_reaches_the_bot(
    start_upstream: StartUpstream, start_gateway: StartGateway, handshake: bytes
) -> None:
    bot = Bot()
    gw = await start_gateway(make_config(await start_upstream(bot.app()), **SETTINGS))

    got = await wait(_exchange(gw.port, b"GET /c/1/chat HTTP/1.1\r\n" + handshake + b"\r\n"))

    assert got.startswith(b"HTTP/1.1 400 "), got[:60]
    assert bot.seen == []


@pytest.mark.parametrize(
    "handshake",
    [
        HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZSBub25j\xffQ=="),
        HANDSHAKE.replace(b"Version: 13", b"Version: 1\x803"),
    ],
    ids=["key", "version"],
)
async def test_a_websocket_handshake_with_non_ascii_bytes_is_a_400(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    caplog: pytest.LogCaptureFixture,
    handshake: bytes,
) -> None:
    gw = await start_gateway(make_config(await start_upstream(Bot().app()), **SETTINGS))

    got = await wait(_exchange(gw.port, b"GET /c/1/chat HTTP/1.1\r\n" + handshake + b"\r\n"))

    assert got.startswith(b"HTTP/1.1 400 "), got[:60]
    assert_no_errors(caplog)


async def test_a_websocket_handshake_aiohttp_cannot_parse_gets_the_gateways_400(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(make_config(await start_upstream(Bot().app()), **SETTINGS))

    got = await wait(_exchange(gw.port, b"GET * HTTP/1.1\r\n" + HANDSHAKE + b"\r\n"))

    assert got.startswith(b"HTTP/1.1 400 "), got[:60]
    assert b'{"error": {"code": "bad_request"' in got
