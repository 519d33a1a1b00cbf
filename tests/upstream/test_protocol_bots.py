"""The protocol-faithful test bots themselves: each one's wire format, on a real socket."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from protocol_bots import (
    BotpressConverseBot,
    DialogflowCxBot,
    DialogflowWebhookBot,
    ProtocolBot,
    RasaRestBot,
)

Client = TestClient[Any, Any]
AGENT = "/v3/projects/p-1/locations/global/agents/0a1b2c3d"
AGENT_NAME = AGENT.removeprefix("/v3/")


async def serve(bot: ProtocolBot, aiohttp_server: Any, aiohttp_client: Any) -> Client:
    client: Client = await aiohttp_client(await aiohttp_server(bot.app()))
    return client


async def post_and_read(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.post(path, **kwargs) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


# --- Rasa REST -----------------------------------------------------------------------------------------


@pytest.fixture
async def rasa(aiohttp_server: Any, aiohttp_client: Any) -> tuple[RasaRestBot, Client]:
    bot = RasaRestBot()
    return bot, await serve(bot, aiohttp_server, aiohttp_client)


async def test_rasa_counts_turns_per_sender(rasa: tuple[RasaRestBot, Client]) -> None:
    bot, client = rasa
    hook = "/webhooks/rest/webhook"
    answers = [
        await post_and_read(
            client, hook, json={"sender": "alice", "message": "hi"}, headers={"X-Session-Id": "s-1"}
        ),
        await post_and_read(client, hook, json={"sender": "bob", "message": "hello"}),
        await post_and_read(client, hook, json={"sender": "alice", "message": " how are you \n"}),
    ]
    assert answers == [
        (200, [{"recipient_id": "alice", "text": "turn 1: hi"}]),
        (200, [{"recipient_id": "bob", "text": "turn 1: hello"}]),
        (200, [{"recipient_id": "alice", "text": "turn 2: how are you"}]),
    ]
    assert bot.keys == ["alice", "bob", "alice"] and bot.turns == {"alice": 2, "bob": 1}
    first = bot.seen[0]
    assert (first.method, first.raw_path, first.headers["X-Session-Id"]) == ("POST", hook, "s-1")
    assert first.json == {"sender": "alice", "message": "hi"}


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"message": "hi"}, "default"),
        ({"sender": None, "message": "hi"}, "default"),
        ({"sender": 42, "message": "hi"}, "42"),
    ],
    ids=["absent", "null", "number"],
)
async def test_rasa_sender_defaults_as_rasa_does(
    rasa: tuple[RasaRestBot, Client], body: dict[str, Any], key: str
) -> None:
    bot, client = rasa
    assert await post_and_read(client, "/webhooks/rest/webhook", json=body) == (
        200,
        [{"recipient_id": key, "text": "turn 1: hi"}],
    )
    assert bot.last.key == key


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        (b'{"sender": "alice"}', 200, []),
        (b'{"sender": "alice", "message": ""}', 200, []),
        (
            b"sender=alice&message=hi",
            400,
            {"description": "Bad Request", "status": 400, "message": "Failed when parsing body as json"},
        ),
        (b'["alice"]', 500, None),
        (b"", 500, None),
    ],
    ids=["no-message", "empty-message", "form", "array", "empty-body"],
)
async def test_rasa_refusals(rasa: tuple[RasaRestBot, Client], body: bytes, status: int, answer: Any) -> None:
    bot, client = rasa
    got_status, got = await post_and_read(
        client, "/webhooks/rest/webhook", data=body, headers={"Content-Type": "application/json"}
    )
    assert got_status == status
    if answer is not None:
        assert got == answer
    else:
        assert got["status"] == 500 and got["description"] == "Internal Server Error"
    assert bot.turns == {} and len(bot.seen) == 1


async def test_rasa_health_routes(rasa: tuple[RasaRestBot, Client]) -> None:
    _, client = rasa
    async with client.get("/") as response:
        assert (response.status, await response.text()) == (200, "Hello from Rasa: 3.6.20")
    for path in ("/webhooks/rest", "/webhooks/rest/"):
        async with client.get(path) as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
    async with client.get("/webhooks/rest/webhook") as response:
        assert response.status == 405


# --- Dialogflow CX detectIntent ------------------------------------------------------------------------


@pytest.fixture
async def cx(aiohttp_server: Any, aiohttp_client: Any) -> tuple[DialogflowCxBot, Client]:
    bot = DialogflowCxBot()
    return bot, await serve(bot, aiohttp_server, aiohttp_client)


def detect(text: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"queryInput": {"text": {"text": text}, "languageCode": "en"}}
    if params:
        body["queryParams"] = {"parameters": params}
    return body


async def test_cx_detect_intent_counts_turns_per_session(cx: tuple[DialogflowCxBot, Client]) -> None:
    bot, client = cx
    session = "3f2c1b7e-0d4a-4c59-9d1e-8a6b5c4d3e2f"  # 36 bytes: the most Dialogflow CX takes
    url = f"{AGENT}/sessions/{session}:detectIntent"
    status, first = await post_and_read(client, url, json=detect("hi", city="Oslo"))
    assert status == 200
    assert first["responseType"] == "FINAL" and len(first["responseId"]) == 36
    result = first["queryResult"]
    assert result["text"] == "hi" and result["languageCode"] == "en"
    assert result["responseMessages"] == [{"text": {"text": ["turn 1: hi"]}}]
    assert result["parameters"] == {"city": "Oslo", "turn": 1}
    assert result["currentPage"]["name"].startswith(AGENT_NAME + "/flows/")

    await post_and_read(client, f"{AGENT}/sessions/other:detectIntent", json=detect("hello"))
    _, second = await post_and_read(client, url, json=detect("again"))
    assert second["queryResult"]["parameters"] == {"city": "Oslo", "turn": 2}  # session parameters persist
    assert second["queryResult"]["responseMessages"][0]["text"]["text"] == ["turn 2: again"]
    assert bot.keys == [session, "other", session]
    assert bot.turns == {f"{AGENT_NAME}/sessions/{session}": 2, f"{AGENT_NAME}/sessions/other": 1}


async def test_cx_environment_sessions_are_their_own(cx: tuple[DialogflowCxBot, Client]) -> None:
    bot, client = cx
    await post_and_read(client, f"{AGENT}/sessions/s1:detectIntent", json=detect("hi"))
    status, answer = await post_and_read(
        client, f"{AGENT}/environments/draft/sessions/s1:detectIntent", json=detect("hi")
    )
    assert status == 200 and answer["queryResult"]["parameters"]["turn"] == 1
    assert f"{AGENT_NAME}/environments/draft/sessions/s1" in bot.turns


@pytest.mark.parametrize(
    ("session", "body", "message"),
    [
        ("x" * 37, detect("hi"), "Session ID must be at most 36 bytes, got 37."),
        ("é" * 19, detect("hi"), "Session ID must be at most 36 bytes, got 38."),
        (
            "s",
            {**detect("hi"), "sender": "x"},
            'Invalid JSON payload received. Unknown name "sender": Cannot find field.',
        ),
        ("s", {"queryInput": {"languageCode": "en"}}, "Query input must have one of"),
        ("s", {"queryInput": {"text": {"text": "hi"}}}, "Query input must have a language code."),
        ("s", b"{", "Invalid JSON payload received. Unexpected token."),
    ],
    ids=["long-id", "long-utf8-id", "unknown-field", "no-text", "no-language", "not-json"],
)
async def test_cx_invalid_argument(
    cx: tuple[DialogflowCxBot, Client], session: str, body: Any, message: str
) -> None:
    bot, client = cx
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    status, answer = await post_and_read(client, f"{AGENT}/sessions/{session}:detectIntent", **kwargs)
    assert status == 400
    error = answer["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"].startswith(message)
    assert bot.turns == {}


async def test_cx_unknown_field_carries_google_details(cx: tuple[DialogflowCxBot, Client]) -> None:
    _, client = cx
    _, answer = await post_and_read(
        client, f"{AGENT}/sessions/s:detectIntent", json={**detect("hi"), "session": "x"}
    )
    (detail,) = answer["error"]["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0]["description"].startswith(
        'Invalid JSON payload received. Unknown name "session"'
    )


async def test_cx_other_methods_and_paths_are_not_found(cx: tuple[DialogflowCxBot, Client]) -> None:
    _, client = cx
    for path in (f"{AGENT}/sessions/s:matchIntent", f"{AGENT}/sessions/s", f"{AGENT}/sessions/:detectIntent"):
        status, _ = await post_and_read(client, path, json=detect("hi"))
        assert status == 404, path


# --- Dialogflow CX webhook -----------------------------------------------------------------------------


async def test_cx_webhook_counts_turns_per_session_info(aiohttp_server: Any, aiohttp_client: Any) -> None:
    bot = DialogflowWebhookBot()
    client = await serve(bot, aiohttp_server, aiohttp_client)
    alice, bob = f"{AGENT_NAME}/sessions/alice", f"{AGENT_NAME}/sessions/bob"

    def request(session: str, text: str) -> dict[str, Any]:
        return {
            "detectIntentResponseId": "r-1",
            "languageCode": "en",
            "fulfillmentInfo": {"tag": "answer"},
            "sessionInfo": {"session": session, "parameters": {"turn": 0}},
            "text": text,
        }

    await post_and_read(client, "/webhook", json=request(alice, "hi"))
    await post_and_read(client, "/webhook", json=request(bob, "hi"))
    status, answer = await post_and_read(client, "/webhook", json=request(alice, "again"))
    assert (status, answer) == (
        200,
        {
            "fulfillmentResponse": {"messages": [{"text": {"text": ["turn 2: again"]}}]},
            "sessionInfo": {"parameters": {"turn": 2}},
        },
    )
    assert bot.keys == [alice, bob, alice]
    for body in ({"text": "hi"}, {"sessionInfo": {"session": "alice"}}, ["x"]):
        status, _ = await post_and_read(client, "/webhook", json=body)
        assert status == 400
    assert bot.turns == {alice: 2, bob: 1}


# --- Botpress converse ---------------------------------------------------------------------------------


async def test_botpress_converse_counts_turns_per_user(aiohttp_server: Any, aiohttp_client: Any) -> None:
    bot = BotpressConverseBot()
    client = await serve(bot, aiohttp_server, aiohttp_client)
    answers = [
        await post_and_read(client, "/api/v1/bots/welcome/converse/u1", json={"type": "text", "text": "hi"}),
        await post_and_read(client, "/api/v1/bots/welcome/converse/u2", json={"type": "text", "text": "hi"}),
        await post_and_read(
            client, "/api/v1/bots/welcome/converse/u1", json={"type": "text", "text": "again"}
        ),
    ]
    assert [a for _, a in answers] == [
        {"responses": [{"type": "text", "markdown": True, "text": "turn 1: hi"}]},
        {"responses": [{"type": "text", "markdown": True, "text": "turn 1: hi"}]},
        {"responses": [{"type": "text", "markdown": True, "text": "turn 2: again"}]},
    ]
    assert bot.keys == ["u1", "u2", "u1"]
    for body in ({"type": "text"}, {"type": "text", "text": 5}, {"type": "text", "text": "x" * 361}):
        status, error = await post_and_read(client, "/api/v1/bots/welcome/converse/u1", json=body)
        assert (status, error["type"]) == (400, "InvalidParameterError")
    assert bot.turns == {"u1": 2, "u2": 1}
