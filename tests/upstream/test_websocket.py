"""WebSocket proxying over loopback: frames, control frames and close codes cross both ways."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from gateway_helpers import (
    SpawnGateway,
    StartGateway,
    StartUpstream,
    closed_url,
    eventually,
    make_config,
    wait,
)


class WebSocketEchoBot:
    """An upstream WebSocket echo with a few commands, recording the close code it receives."""

    def __init__(self) -> None:
        self.closes: asyncio.Queue[int | None] = asyncio.Queue()
        self.offered: list[str] = []
        self.pongs: asyncio.Queue[bytes] = asyncio.Queue()

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self.offered.append(request.headers.get("Sec-WebSocket-Protocol", ""))
        ws = web.WebSocketResponse(protocols=("chat.v2",), autoping=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "ping me":
                    await ws.ping(b"from-upstream")
                elif msg.data == "close 4002":
                    await ws.close(code=4002, message=b"bot says bye")
                else:
                    await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                self.pongs.put_nowait(msg.data)
        self.closes.put_nowait(ws.close_code)
        return ws

    async def refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="not you")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/refuse", self.refuse)
        return app


@pytest.fixture
async def bot_and_gateway(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> tuple[WebSocketEchoBot, Any]:
    bot = WebSocketEchoBot()
    return bot, await start_gateway(make_config(await start_upstream(bot.app())))


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await wait(ws.receive())


async def test_text_and_binary_frames_echo_through(bot_and_gateway: tuple[WebSocketEchoBot, Any]) -> None:
    _, gw = bot_and_gateway
    async with gw.client.ws_connect("/ws", autoping=False) as ws:
        await ws.send_str("héllo")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "héllo")

        await ws.send_bytes(b"\x00\x01\xfe\xff")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00\x01\xfe\xff")
        assert gw.metric("session_gateway_streams_open", kind="websocket") == 1
    await eventually(lambda: gw.metric("session_gateway_streams_open", kind="websocket") == 0)


async def test_ping_and_pong_cross_both_ways(bot_and_gateway: tuple[WebSocketEchoBot, Any]) -> None:
    bot, gw = bot_and_gateway
    async with gw.client.ws_connect("/ws", autoping=False) as ws:
        await ws.ping(b"from-client")  # the bot answers a ping with a pong carrying its payload
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"from-client")

        await ws.send_str("ping me")  # the bot pings the client; the client's pong reaches the bot
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.PING, b"from-upstream")
        await ws.pong(msg.data)
        assert await wait(bot.pongs.get()) == b"from-upstream"


async def test_client_close_code_reaches_the_upstream(bot_and_gateway: tuple[WebSocketEchoBot, Any]) -> None:
    bot, gw = bot_and_gateway
    ws = await gw.client.ws_connect("/ws", autoping=False)
    await ws.send_str("warm-up")
    assert (await receive(ws)).data == "warm-up"
    await wait(ws.close(code=4001, message=b"user left"))

    assert await wait(bot.closes.get()) == 4001


async def test_upstream_close_code_reaches_the_client(bot_and_gateway: tuple[WebSocketEchoBot, Any]) -> None:
    _, gw = bot_and_gateway
    async with gw.client.ws_connect("/ws", autoping=False) as ws:
        await ws.send_str("close 4002")
        msg = await receive(ws)

        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 4002
        assert msg.extra == "bot says bye"


async def test_subprotocol_chosen_by_the_upstream_is_the_one_the_client_sees(
    bot_and_gateway: tuple[WebSocketEchoBot, Any],
) -> None:
    bot, gw = bot_and_gateway
    async with gw.client.ws_connect("/ws", protocols=("chat.v1", "chat.v2"), autoping=False) as ws:
        assert ws.protocol == "chat.v2"
    assert [p.replace(" ", "") for p in bot.offered] == ["chat.v1,chat.v2"]


async def test_refused_upstream_handshake_gives_the_client_that_status(
    bot_and_gateway: tuple[WebSocketEchoBot, Any],
) -> None:
    _, gw = bot_and_gateway
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.client.ws_connect("/refuse")
    assert refused.value.status == 403


async def test_websocket_to_a_down_upstream_is_502_json(start_gateway: StartGateway) -> None:
    gw = await start_gateway(make_config(closed_url()))
    response = await gw.client.get(
        "/ws",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )

    assert response.status == 502
    body = json.loads(await response.read())
    assert body["error"]["code"] == "upstream_unavailable"
    assert set(body["error"]) == {"code", "message"}
    assert gw.metric("session_gateway_upstream_errors_total", reason="connect") == 1


async def test_open_websockets_past_pool_size_starve_neither_handshakes_nor_the_readiness_probe(
    start_upstream: StartUpstream, spawn_gateway: SpawnGateway
) -> None:
    """Each open WebSocket holds its bot connection: bounded by upstream.pool_size, two open ones made the
    third handshake wait for a slot forever, and the readiness probe, on the same connector, too (found by
    an attacker-minded test). WebSockets are bounded by listen.max_connections, the probe has its own."""
    bot = WebSocketEchoBot()
    app = bot.app()

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    gw = await spawn_gateway(
        upstream_url=await start_upstream(app),
        GATEWAY_UPSTREAM_POOL_SIZE="2",
        GATEWAY_UPSTREAM_READY_PATH="/health",
        GATEWAY_UPSTREAM_QUEUE_TIMEOUT="1",
        GATEWAY_ADMIN_READY_CHECK_INTERVAL="0.2",
    )
    async with aiohttp.ClientSession() as http:
        sockets = [await wait(http.ws_connect(gw.url + "/ws"), 5.0) for _ in range(4)]  # twice pool_size
        for n, ws in enumerate(sockets):
            await ws.send_str(f"hello {n}")
            assert (await wait(ws.receive(), 5.0)).data == f"hello {n}"

        async def ready() -> bool:
            async with http.get(gw.admin_url + "/readyz") as response:
                return response.status == 200

        await asyncio.sleep(0.5)  # a few probes since all four opened
        assert await ready()
        async with http.get(gw.url + "/health") as response:
            assert (response.status, await response.text()) == (200, "ok")
        for ws in sockets:
            await ws.close()
