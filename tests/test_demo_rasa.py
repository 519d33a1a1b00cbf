"""The Rasa REST demo bot, alone."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.demo_rasa import REST_WEBHOOK, create_rasa_bot_app

Client = TestClient[Any, Any]


async def say(client: Client, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with client.post(REST_WEBHOOK, json=body, headers=headers) as response:
        return response.status, await response.json()


@pytest.fixture
async def bot(aiohttp_client: Any) -> Client:
    client: Client = await aiohttp_client(create_rasa_bot_app(max_senders=2))
    return client


async def test_turns_count_per_sender(bot: Client) -> None:
    first = await say(bot, {"sender": "alice", "message": "hi"}, {"X-Session-New": "first"})
    await say(bot, {"sender": "bob", "message": "hello"})
    second = await say(bot, {"sender": "alice", "message": " how are you "})
    assert first == (
        200,
        [
            {"recipient_id": "alice", "text": "Hello! You said: hi"},
            {"recipient_id": "alice", "custom": {"turn": 1, "gatewaySignal": "first"}},
        ],
    )
    assert second == (
        200,
        [
            {"recipient_id": "alice", "text": "You said: how are you"},
            {"recipient_id": "alice", "custom": {"turn": 2}},
        ],
    )


async def test_sender_defaults_like_rasa(bot: Client) -> None:
    _, answer = await say(bot, {"message": "hi"})
    assert answer[0]["recipient_id"] == "default"
    _, answer = await say(bot, {"sender": 7, "message": "hi"})
    assert answer[0]["recipient_id"] == "7"


async def test_the_least_recently_active_sender_is_forgotten(bot: Client) -> None:
    """max_senders=2: a third sender drops the oldest, whose next turn starts over."""
    for sender in ("a", "b", "a", "c"):
        await say(bot, {"sender": sender, "message": "hi"})
    _, for_a = await say(bot, {"sender": "a", "message": "hi"})
    _, for_b = await say(bot, {"sender": "b", "message": "hi"})
    assert (for_a[1]["custom"]["turn"], for_b[1]["custom"]["turn"]) == (3, 1)


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        ({"sender": "a"}, 200, []),
        ({"sender": "a", "message": "  "}, 200, []),
        (
            ["a"],
            400,
            {"description": "Bad Request", "status": 400, "message": "Failed when parsing body as json"},
        ),
    ],
    ids=["no-message", "blank-message", "not-an-object"],
)
async def test_what_it_cannot_answer(bot: Client, body: Any, status: int, answer: Any) -> None:
    assert await say(bot, body) == (status, answer)


async def test_not_json_and_health(bot: Client) -> None:
    async with bot.post(REST_WEBHOOK, data=b"message=hi") as response:
        assert response.status == 400
    async with bot.get("/") as response:
        assert await response.text() == "Hello from Rasa: session-gateway demo"
    async with bot.get("/webhooks/rest/") as response:
        assert await response.json() == {"status": "ok"}
