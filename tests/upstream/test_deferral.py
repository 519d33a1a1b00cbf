"""Slow bots: interim answers, pick-ups, the Dialogflow CX flow, and upstream.max_response_size."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from aiohttp import web
from gateway_helpers import LOOPBACK
from redis_server import RedisServer
from replica_helpers import gateway_config
from session_helpers import FakeClock, Reply, Rig, make_session_config, start_rig

from gateway.config import Config, DeferredConfig
from gateway.upstream.deferred import RUNNING, Answer, MemoryDeferred

SLOW = {"GATEWAY_DEFERRED_AFTER": "0.2", "GATEWAY_DEFERRED_POLL_WAIT": "0.3"}


class GatedBot:
    """Answers once the test opens its gate (so "the bot has not answered yet" is a fact, not a timing).

    `?fail=1`: closes the connection instead of answering; `?big=<n>`: an answer of n bytes, chunked with
    `?chunked=1`; `?sse=1`: an event stream whose head comes at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        if request.query.get("sse"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await self.gate.wait()
            await response.write(b"data: late\n\n")
            return response
        await self.gate.wait()
        if request.query.get("fail"):
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError
        size = int(request.query.get("big", "0"))
        if size:
            if request.query.get("chunked"):
                response = web.StreamResponse()
                await response.prepare(request)
                await response.write(b"x" * size)
                await response.write_eof()
                return response
            return web.Response(body=b"x" * size)
        session = request.cookies.get("JSESSIONID")
        body = {"answer": "late but here", "session": session}
        response = web.json_response(body)
        if session is None:
            response.set_cookie("JSESSIONID", "BOT0001")
        return response


@pytest.fixture
async def bot(aiohttp_server: Any) -> GatedBot:
    gated = GatedBot()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gated.handle)
    server = await aiohttp_server(app)
    gated.url = f"http://{LOOPBACK}:{server.port}"
    return gated


async def rig_with(aiohttp_client: Any, clock: FakeClock, url: str, **env: str) -> Rig:
    environ = {**SLOW, **{f"GATEWAY_{k.upper()}": v for k, v in env.items()}}
    return await start_rig(aiohttp_client, make_session_config(url, environ=environ), clock)


async def pickup(rig: Rig, token: str, session: str | None = None) -> Reply:
    return await rig.send(f"/_gateway/deferred/{token}", header=session)


async def test_a_late_bot_gets_the_client_an_interim_then_the_answer_by_pick_up(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await rig_with(aiohttp_client, clock, bot.url)
    interim = await rig.send("/ask", method="POST", data=b"userinput=hi")
    assert interim.status == 202 and bot.calls == 1 and not bot.gate.is_set()
    token = interim.headers["X-Session-Deferred"]
    assert interim.json == {"deferred": {"token": token, "poll": f"/_gateway/deferred/{token}"}}
    assert interim.headers["Retry-After"] == "1"
    assert "X-Session-Id" not in interim.headers  # the bot has not said which session it starts
    assert (await pickup(rig, token)).status == 202  # still running after poll_wait: the interim again
    bot.gate.set()
    answer = await pickup(rig, token)
    assert answer.status == 200 and answer.json == {"answer": "late but here", "session": None}
    # The session's bookkeeping happened when the bot answered, and reaches the client with the pick-up.
    assert answer.headers["X-Session-New"] == "first" and answer.headers["X-Session-Id"] == "BOT0001"
    assert any(c.startswith("JSESSIONID=BOT0001") for c in answer.headers.getall("Set-Cookie"))
    assert "X-Session-Deferred" not in answer.headers
    again = await pickup(rig, token, "BOT0001")
    assert again.status == 404 and again.json["error"]["code"] == "deferred_not_found"  # single use
    assert rig.metric("deferred_total", outcome="delivered") == 1
    assert rig.started("first") == 1 and bot.calls == 1
    assert rig.metric("deferred_pending") == 0


async def test_a_token_is_bound_to_its_session(bot: GatedBot, aiohttp_client: Any, clock: FakeClock) -> None:
    bot.gate.set()
    rig = await rig_with(aiohttp_client, clock, bot.url)
    sid = (await rig.send("/")).session_id  # answered at once: a live session
    assert sid == "BOT0001"
    bot.gate.clear()
    interim = await rig.send("/", header=sid)
    token = interim.headers["X-Session-Deferred"]
    assert interim.headers["X-Session-Id"] == sid and interim.headers["X-Gateway-Session"]  # known already
    bot.gate.set()
    await asyncio.sleep(0.05)
    assert (await pickup(rig, token, "SOMEONE-ELSE")).status == 404
    assert (await pickup(rig, token)).status == 404  # no session at all is not this session either
    answer = await pickup(rig, token, sid)
    assert answer.status == 200 and answer.json["session"] == sid


@pytest.mark.parametrize("format_", ["teneo", "dialogflow-cx"])
async def test_interim_shapes(bot: GatedBot, aiohttp_client: Any, clock: FakeClock, format_: str) -> None:
    rig = await rig_with(aiohttp_client, clock, bot.url, deferred_format=format_, deferred_message="Hold on")
    interim = await rig.send("/", method="POST", data=b"{}")
    token = interim.headers["X-Session-Deferred"]
    assert interim.status == 200
    if format_ == "teneo":
        assert interim.json["status"] == 0 and interim.json["output"]["text"] == "Hold on"
        assert interim.json["output"]["parameters"]["gateway_deferred"] == token
    else:
        assert interim.json == {
            "fulfillmentResponse": {"messages": [{"text": {"text": ["Hold on"]}}]},
            "sessionInfo": {"parameters": {"gateway_deferred": token}},
        }
    bot.gate.set()


async def test_dialogflow_cx_fetches_the_answer_with_its_next_webhook_call(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    """The seed article's flow: answer early, keep working, a second webhook call gets the result."""
    rig = await rig_with(aiohttp_client, clock, bot.url, deferred_format="dialogflow-cx")
    call = {"sessionInfo": {"session": "projects/p/locations/l/agents/a/sessions/s1", "parameters": {}}}
    first = await rig.send("/webhook", method="POST", data=json.dumps(call).encode())
    token = first.json["sessionInfo"]["parameters"]["gateway_deferred"]
    follow_up = {
        "sessionInfo": {"session": call["sessionInfo"]["session"], "parameters": {"gateway_deferred": token}}
    }
    early = await rig.send("/webhook", method="POST", data=json.dumps(follow_up).encode())
    assert (
        early.json["sessionInfo"]["parameters"]["gateway_deferred"] == token
    )  # still working: interim again
    bot.gate.set()
    late = await rig.send("/webhook", method="POST", data=json.dumps(follow_up).encode())
    assert late.status == 200 and late.json["answer"] == "late but here"
    assert bot.calls == 1  # the follow-ups never reached the bot
    # A token that waits for nothing (delivered already) is the bot's business: the call is forwarded.
    forwarded = await rig.send("/webhook", method="POST", data=json.dumps(follow_up).encode())
    assert forwarded.status == 200 and bot.calls == 2


async def test_a_failing_bot_is_kept_as_its_error(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await rig_with(aiohttp_client, clock, bot.url)
    token = (await rig.send("/?fail=1")).headers["X-Session-Deferred"]
    bot.gate.set()
    answer = await pickup(rig, token)
    for _ in range(20):
        if answer.status != 202:
            break
        answer = await pickup(rig, token)
    assert answer.status == 502 and answer.json["error"]["code"] == "upstream_unavailable"
    assert rig.metric("deferred_total", outcome="failed") == 1


@pytest.mark.parametrize("chunked", ["", "1"])
async def test_an_answer_over_the_cap_is_kept_as_a_502(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock, chunked: str
) -> None:
    rig = await rig_with(aiohttp_client, clock, bot.url, upstream_max_response_size="1000")
    token = (await rig.send(f"/?big=5000&chunked={chunked}")).headers["X-Session-Deferred"]
    bot.gate.set()
    answer = await pickup(rig, token)
    while answer.status == 202:
        answer = await pickup(rig, token)
    assert answer.status == 502 and answer.json["error"]["code"] == "upstream_response_too_large"
    assert rig.metric("deferred_total", outcome="too_large") == 1


async def test_max_pending_reached_means_waiting_as_usual(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await rig_with(aiohttp_client, clock, bot.url, deferred_max_pending="1")
    first = await rig.send("/")
    assert first.status == 202
    second = asyncio.ensure_future(rig.send("/"))
    await asyncio.sleep(0.4)  # past deferred.after: the second is not deferred, it waits for the bot
    assert not second.done()
    bot.gate.set()
    assert (await second).status == 200


async def test_an_event_stream_whose_head_came_is_never_deferred(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await rig_with(aiohttp_client, clock, bot.url)
    async with rig.client.get("/?sse=1") as response:
        assert response.status == 200 and "X-Session-Deferred" not in response.headers
        bot.gate.set()
        assert await response.content.readline() == b"data: late\n"


@pytest.mark.parametrize(
    ("query", "status"), [("big=999", 200), ("big=1001", 502), ("big=1001&chunked=1", 502)]
)
async def test_max_response_size_for_every_request(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock, query: str, status: int
) -> None:
    bot.gate.set()
    env = {"GATEWAY_UPSTREAM_MAX_RESPONSE_SIZE": "1000"}
    rig = await start_rig(aiohttp_client, make_session_config(bot.url, environ=env), clock)
    reply = await rig.send(f"/?{query}")
    assert reply.status == status
    if status == 502:
        assert reply.json["error"]["code"] == "upstream_response_too_large"
        assert rig.metric("upstream_errors_total", reason="too_large") == 1
    else:
        assert len(reply.body) == 999


async def test_a_head_answer_under_max_response_size_keeps_the_bots_content_length(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    """The kept (empty) body of a HEAD's answer once set its Content-Length to 0 (RFC 9110 §9.3.2: the
    length the GET's body would have)."""
    bot.gate.set()
    env = {"GATEWAY_UPSTREAM_MAX_RESPONSE_SIZE": "1000"}
    rig = await start_rig(aiohttp_client, make_session_config(bot.url, environ=env), clock)
    reply = await rig.send("/?big=999", method="HEAD")
    assert (reply.status, reply.headers["Content-Length"], reply.body) == (200, "999", b"")


async def test_shutdown_gives_deferred_exchanges_the_grace_then_cancels_them(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await rig_with(aiohttp_client, clock, bot.url, listen_shutdown_timeout="0.5")
    token = (await rig.send("/")).headers["X-Session-Deferred"]
    from gateway.app import DEFERRALS

    deferrals = rig.app[DEFERRALS]
    await asyncio.wait_for(deferrals.close(0.3), 5)  # the bot never answers: cancelled after the grace
    assert rig.metric("deferred_pending") == 0
    assert await deferrals.store.take(token, None, 0.01) is None  # its token answers 404
    bot.gate.set()


# --- the in-process store, with an injected clock -------------------------------------------------------


async def test_memory_deferred_forgets_what_nobody_picked_up_within_keep() -> None:
    now = [0.0]
    expired: list[int] = []
    store = MemoryDeferred(10, clock=lambda: now[0], on_expired=lambda: expired.append(1))
    assert await store.open("t1", None, keep=300)
    await store.finish("t1", Answer(200, "", (), b"x"), keep=300)
    now[0] = 299.0
    assert await store.open("t2", "s", keep=300)
    assert await store.take("t2", "s", wait=0.01) == RUNNING
    now[0] = 301.0
    assert await store.take("t1", None, wait=0.01) is None and expired == [1]
    assert await store.take("t3", None, 0.01) is None  # never opened


async def test_two_replicas_on_one_redis_interim_from_one_pick_up_on_the_other(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock, redis: RedisServer
) -> None:
    def node_config() -> Config:
        config = gateway_config(bot.url, redis)
        return dataclasses.replace(config, deferred=DeferredConfig(after=0.2, poll_wait=5.0))

    a = await start_rig(aiohttp_client, node_config(), clock)
    b = await start_rig(aiohttp_client, node_config(), clock)
    interim = await a.send("/ask")
    token = interim.headers["X-Session-Deferred"]
    waiting = asyncio.ensure_future(pickup(b, token))  # B long-polls before the bot answered on A
    await asyncio.sleep(0.1)
    bot.gate.set()
    answer = await asyncio.wait_for(waiting, 10)
    assert answer.status == 200 and answer.json["answer"] == "late but here"
    assert answer.headers["X-Session-New"] == "first" and answer.headers["X-Session-Id"] == "BOT0001"
    assert (await pickup(a, token, "BOT0001")).status == 404  # delivered once, across replicas
    assert b.metric("deferred_total", outcome="delivered") == 1


async def test_a_head_request_never_uses_up_an_answer(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await rig_with(aiohttp_client, clock, bot.url)
    token = (await rig.send("/")).headers["X-Session-Deferred"]
    bot.gate.set()
    await asyncio.sleep(0.05)
    assert (await rig.send(f"/_gateway/deferred/{token}", method="HEAD")).status == 405
    assert (await pickup(rig, token)).status == 200


async def test_dialogflow_tokens_are_not_bound_to_a_session_the_agent_cannot_carry(
    bot: GatedBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    """With gateway-issued sessions the webhook call starts one, but the agent never sends our cookie back."""
    rig = await rig_with(
        aiohttp_client, clock, bot.url, deferred_format="dialogflow-cx", session_issuer="gateway"
    )
    call = {"sessionInfo": {"session": "projects/p/locations/l/agents/a/sessions/s1", "parameters": {}}}
    first = await rig.send("/webhook", method="POST", data=json.dumps(call).encode())
    token = first.json["sessionInfo"]["parameters"]["gateway_deferred"]
    bot.gate.set()
    follow_up = {
        "sessionInfo": {
            "session": "projects/p/locations/l/agents/a/sessions/s1",
            "parameters": {"gateway_deferred": token},
        }
    }
    answer = await rig.send("/webhook", method="POST", data=json.dumps(follow_up).encode())
    assert answer.json["answer"] == "late but here" and bot.calls == 1
