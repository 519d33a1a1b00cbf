"""Bots that key the conversation in the body or the URL (Rasa REST, Dialogflow CX, Botpress), end to end:
the gateway issues the id, carries it to a cookie-less client, and places it where the bot reads it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gateway_helpers import LOOPBACK
from protocol_bots import BotpressConverseBot, DialogflowCxBot, DialogflowWebhookBot, ProtocolBot, RasaRestBot
from session_helpers import FakeClock, Reply, Rig, StartRig, carrying, make_session_config, start_rig

WEBHOOK = "/webhooks/rest/webhook"
AGENT = "/v3/projects/p-1/locations/global/agents/0a1b2c3d"
StartBot = Callable[[ProtocolBot], Awaitable[str]]


@pytest.fixture
def serve_bot(aiohttp_server: Any) -> StartBot:
    async def start(bot: ProtocolBot) -> str:
        server = await aiohttp_server(bot.app())
        return f"http://{LOOPBACK}:{server.port}"

    return start


@pytest.fixture
def gateway(aiohttp_client: Any, clock: FakeClock) -> StartRig:
    """start(url, **session keys) -> a gateway whose session keys go through the loader (presets expand)."""

    async def start(url: str, **session: Any) -> Rig:
        env = {
            f"GATEWAY_SESSION_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in session.items()
        }
        return await start_rig(aiohttp_client, make_session_config(url, environ=env), clock)

    return start


async def post_cookieless(
    rig: Rig, path: str, body: Any, session_id: str | None = None, raw: bytes | None = None
) -> Reply:
    """A cookie-less browser's POST: the session, when it has one, in X-Teneo-Session."""
    headers = carrying(session_id)
    headers["Content-Type"] = "application/json"
    data = raw if raw is not None else json.dumps(body).encode()
    async with rig.client.post(path, data=data, headers=headers) as response:
        return Reply(response.status, response.headers, await response.read())


def started(rig: Rig) -> float:
    return sum(
        rig.started(r) or 0
        for r in ("first", "expired", "lifetime", "ended", "unknown", "upstream", "adopted")
    )


async def test_rasa_rest_a_cookieless_client_converses_under_the_gateways_id(
    serve_bot: StartBot, gateway: StartRig
) -> None:
    bot = RasaRestBot()
    rig = await gateway(await serve_bot(bot), preset="rasa-rest")
    sid = None
    for turn in range(1, 5):
        # The client writes a sender of its own choosing: it never reaches the bot.
        reply = await post_cookieless(rig, WEBHOOK, {"sender": "mallory", "message": f"hi {turn}"}, sid)
        assert reply.status == 200, reply.body
        sid = sid or reply.session_id
        assert sid and reply.session_id == sid
        assert reply.json == [{"recipient_id": sid, "text": f"turn {turn}: hi {turn}"}]
        assert reply.new == ("first" if turn == 1 else None)
    assert bot.keys == [sid] * 4
    assert bot.last.headers["X-Session-Id"] == sid  # place_header stays on beside the body
    assert int(bot.last.headers["Content-Length"]) == len(bot.last.body)
    assert rig.metric("session_carrier_total", carrier="header") == 3


async def test_rasa_rest_two_clients_never_share_a_conversation(
    serve_bot: StartBot, gateway: StartRig
) -> None:
    bot = RasaRestBot()
    rig = await gateway(await serve_bot(bot), preset="rasa-rest")
    alice = (await post_cookieless(rig, WEBHOOK, {"message": "hi"})).session_id
    assert alice is not None
    # Bob knows Alice's id and writes it where Rasa reads the conversation: he gets one of his own.
    bob = await post_cookieless(rig, WEBHOOK, {"sender": alice, "message": "let me in"})
    assert bob.status == 200 and bob.session_id not in (None, alice)
    assert bob.json[0]["text"] == "turn 1: let me in" and bot.last.key == bob.session_id
    assert bot.turns[alice] == 1


async def test_rasa_rest_expiry_gives_a_new_sender_and_tells_both_sides(
    serve_bot: StartBot, gateway: StartRig, clock: FakeClock
) -> None:
    bot = RasaRestBot()
    rig = await gateway(await serve_bot(bot), preset="rasa-rest", idle_timeout=600)
    old = (await post_cookieless(rig, WEBHOOK, {"message": "hi"})).session_id
    clock.advance(601)
    reply = await post_cookieless(rig, WEBHOOK, {"message": "back"}, old)
    assert reply.new == "expired" and reply.session_id not in (None, old)
    assert bot.last.key == reply.session_id and reply.json[0]["text"] == "turn 1: back"
    assert bot.last.headers["X-Session-New"] == "expired" and bot.last.headers["X-Session-Previous"] == old


async def test_rasa_rest_endsession_ends_it(serve_bot: StartBot, gateway: StartRig) -> None:
    bot = RasaRestBot()
    rig = await gateway(await serve_bot(bot), preset="rasa-rest")
    sid = (await post_cookieless(rig, WEBHOOK, {"message": "hi"})).session_id
    end = await post_cookieless(rig, WEBHOOK + "/endsession", {}, sid)
    assert end.status == 200 and end.json == {"status": 1, "message": "logout"}  # Rasa has no such route: 404
    after = await post_cookieless(rig, WEBHOOK, {"message": "again"}, sid)
    assert after.new == "ended" and after.session_id != sid and after.json[0]["text"] == "turn 1: again"
    assert rig.ended("client") == 1


async def test_a_client_may_carry_its_id_in_the_body(serve_bot: StartBot, gateway: StartRig) -> None:
    """session.carry_json: for a client that cannot set headers; the id is checked like any carried one."""
    bot = RasaRestBot()
    rig = await gateway(await serve_bot(bot), preset="rasa-rest", carry_json="/sender")
    sid = (await post_cookieless(rig, WEBHOOK, {"message": "hi"})).session_id
    again = await post_cookieless(rig, WEBHOOK, {"sender": sid, "message": "more"})
    assert again.session_id == sid and again.new is None and again.json[0]["text"] == "turn 2: more"
    assert rig.metric("session_carrier_total", carrier="body") == 1
    made_up = await post_cookieless(rig, WEBHOOK, {"sender": "made-up-by-client", "message": "x"})
    assert made_up.new == "unknown" and made_up.session_id not in (sid, "made-up-by-client")
    assert bot.last.key == made_up.session_id


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "is not JSON"),
        (b"[1, 2]", "is an array, not a JSON object"),
        (b'{"sender": 1, "message": "\xff"}', "is not UTF-8"),
    ],
)
async def test_a_body_the_id_cannot_go_into_is_400_and_starts_nothing(
    serve_bot: StartBot, gateway: StartRig, raw: bytes, fragment: str
) -> None:
    bot = RasaRestBot()
    rig = await gateway(await serve_bot(bot), preset="rasa-rest")
    reply = await post_cookieless(rig, WEBHOOK, None, raw=raw)
    assert reply.status == 400
    error = reply.json["error"]
    assert (
        error["code"] == "bad_request_body" and fragment in error["message"] and "/sender" in error["message"]
    )
    assert bot.seen == [] and started(rig) == 0


async def test_a_body_over_the_buffer_is_400(
    serve_bot: StartBot, aiohttp_client: Any, clock: FakeClock
) -> None:
    bot = RasaRestBot()
    url = await serve_bot(bot)
    env = {"GATEWAY_SESSION_PRESET": "rasa-rest", "GATEWAY_UPSTREAM_BUFFER_REQUEST_BODY": "1024"}
    rig = await start_rig(aiohttp_client, make_session_config(url, environ=env), clock)
    reply = await post_cookieless(rig, WEBHOOK, {"message": "x" * 2000})
    assert reply.status == 400 and reply.json["error"]["code"] == "bad_request_body"
    assert "buffer_request_body" in reply.json["error"]["message"] and bot.seen == []


async def test_dialogflow_cx_detect_intent_gets_the_gateways_session_in_its_path(
    serve_bot: StartBot, gateway: StartRig
) -> None:
    bot = DialogflowCxBot()
    rig = await gateway(await serve_bot(bot), preset="dialogflow-cx")
    query = {"queryInput": {"text": {"text": "hi"}, "languageCode": "en"}}
    sid = None
    for turn in range(1, 5):
        reply = await post_cookieless(rig, f"{AGENT}/sessions/chosen-by-client:detectIntent", query, sid)
        assert reply.status == 200, reply.body
        sid = sid or reply.session_id
        assert reply.session_id == sid and reply.json["queryResult"]["parameters"]["turn"] == turn
    assert sid is not None and len(sid) == 36
    assert bot.keys == [sid] * 4
    assert bot.last.raw_path == f"{AGENT}/sessions/{sid}:detectIntent"
    # place_required: a path without a session segment is refused, never forwarded with the client's choice.
    other = await post_cookieless(rig, f"{AGENT}:listIntents", {})
    assert other.status == 400 and "session.place_path" in other.json["error"]["message"]
    assert len(bot.seen) == 4


async def test_botpress_converse_gets_the_gateways_user_id(serve_bot: StartBot, gateway: StartRig) -> None:
    bot = BotpressConverseBot()
    rig = await gateway(await serve_bot(bot), preset="botpress")
    first = await post_cookieless(rig, "/api/v1/bots/shop/converse/victim", {"type": "text", "text": "hi"})
    sid = first.session_id
    second = await post_cookieless(
        rig, "/api/v1/bots/shop/converse/victim", {"type": "text", "text": "again"}, sid
    )
    assert second.json["responses"][0]["text"] == "turn 2: again"
    assert bot.keys == [sid, sid] and "victim" not in bot.turns


async def test_a_webhook_gets_a_templated_session_name_in_its_body(
    serve_bot: StartBot, gateway: StartRig
) -> None:
    """place_json = "/sessionInfo/session" with an id_format template: a full Dialogflow CX session name."""
    bot = DialogflowWebhookBot()
    name = "projects/p/locations/global/agents/a/sessions/{uuid}"
    rig = await gateway(
        await serve_bot(bot), issuer="gateway", place_json="/sessionInfo/session", id_format=name
    )
    body = {
        "sessionInfo": {"session": "projects/p/locations/global/agents/a/sessions/other", "parameters": {}}
    }
    first = await post_cookieless(rig, "/webhook", {**body, "text": "hi"})
    sid = first.session_id
    assert sid is not None and sid.startswith(name.removesuffix("{uuid}")) and len(sid) == len(name) - 6 + 36
    second = await post_cookieless(rig, "/webhook", {**body, "text": "again"}, sid)
    assert second.json["fulfillmentResponse"]["messages"][0]["text"]["text"] == ["turn 2: again"]
    assert bot.keys == [sid, sid]
    assert bot.last.json["sessionInfo"]["parameters"] == {}  # the rest of the body as the client sent it
