"""The Teneo-style demo bot, alone, behind the gateway, and as `session-gateway demo`."""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from gateway_helpers import SpawnGateway, StartGateway, StartUpstream, make_config
from session_helpers import FakeClock

from gateway.config import DeferredConfig, DemoConfig, load_config
from gateway.demo import COOKIE, DEMO_DEFERRED_AFTER, create_bot_app, demo_config
from gateway.errors import ConfigError


async def say(
    client: TestClient[Any, Any] | aiohttp.ClientSession, url: str, text: str
) -> tuple[dict[str, Any], str | None]:
    """One turn: the Teneo JSON and the JSESSIONID the bot set (None when it set none)."""
    async with client.get(url, params={"userinput": text}) as response:
        assert response.status == 200
        set_cookies = [v for v in response.headers.getall("Set-Cookie", []) if v.startswith(f"{COOKIE}=")]
        return await response.json(), set_cookies[0].split(";")[0].split("=", 1)[1] if set_cookies else None


@pytest.fixture
async def bot(aiohttp_client: Any) -> tuple[TestClient[Any, Any], FakeClock]:
    clock = FakeClock(1000.0)
    return await aiohttp_client(create_bot_app(idle_timeout=60.0, clock=clock)), clock


async def test_turns_count_up_within_one_session(bot: tuple[TestClient[Any, Any], FakeClock]) -> None:
    client, _ = bot
    first, issued = await say(client, "/", "hi")
    second, again = await say(client, "/", "how are you")
    third, _ = await say(client, "/", "bye")

    assert issued is not None and again is None  # the cookie is set once, then sent back by the client
    assert [t["output"]["parameters"]["turn"] for t in (first, second, third)] == ["1", "2", "3"]
    assert first["sessionId"] == second["sessionId"] == third["sessionId"] == issued
    assert first == {
        "status": 0,
        "input": {"text": "hi", "parameters": {}},
        "output": {"text": "Hello! You said: hi", "emotion": "", "link": "", "parameters": {"turn": "1"}},
        "sessionId": issued,
    }
    assert second["output"]["text"] == "You said: how are you"


async def test_unknown_session_id_gets_a_new_session(bot: tuple[TestClient[Any, Any], FakeClock]) -> None:
    client, _ = bot
    client.session.cookie_jar.update_cookies({COOKIE: "NOT-A-SESSION"})
    answer, issued = await say(client, "/", "hi")

    assert issued is not None and issued != "NOT-A-SESSION"
    assert answer["sessionId"] == issued
    assert answer["output"]["parameters"]["turn"] == "1"


async def test_endsession_logs_out_and_the_next_turn_starts_over(
    bot: tuple[TestClient[Any, Any], FakeClock],
) -> None:
    client, _ = bot
    await say(client, "/", "hi")
    _, _ = await say(client, "/", "again")

    response = await client.post("/x/endsession")
    assert response.status == 200
    assert await response.json() == {"status": 1, "message": "logout"}
    assert (await client.get("/x/endsession")).status == 405

    answer, issued = await say(client, "/", "back")
    assert issued is not None
    assert answer["output"]["parameters"]["turn"] == "1"


async def test_session_expires_after_idle_timeout(bot: tuple[TestClient[Any, Any], FakeClock]) -> None:
    client, clock = bot
    _, first_id = await say(client, "/", "hi")

    clock.now += 60.0  # exactly idle_timeout: still alive
    answer, issued = await say(client, "/", "still here")
    assert issued is None and answer["output"]["parameters"]["turn"] == "2"

    clock.now += 60.001  # past idle_timeout since the last turn
    answer, issued = await say(client, "/", "back")
    assert issued is not None and issued != first_id
    assert answer["output"]["parameters"]["turn"] == "1"


async def test_form_post_input(bot: tuple[TestClient[Any, Any], FakeClock]) -> None:
    client, _ = bot
    response = await client.post("/", data={"userinput": "from a form"})

    assert (await response.json())["input"]["text"] == "from a form"


async def test_think_answers_after_slow_seconds(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_bot_app(slow_seconds=0.3))
    await say(client, "/", "hi")
    started = time.monotonic()
    answer, _ = await say(client, "/", " Think ")
    took = time.monotonic() - started

    assert 0.3 <= took < 2.0
    assert answer["output"]["text"] == "I thought about it for 0.3 seconds. Done!"
    assert answer["output"]["parameters"]["turn"] == "2"
    fast = time.monotonic()
    assert (await say(client, "/", "thinking"))[0]["output"]["text"] == "You said: thinking"  # only the word
    assert time.monotonic() - fast < 0.3


def test_demo_turns_deferred_answers_on_unless_configured() -> None:
    config = load_config(None, environ={})
    shown = demo_config(config)
    assert (shown.deferred.after, shown.deferred.format) == (DEMO_DEFERRED_AFTER, "teneo")
    assert dataclasses.replace(shown, deferred=config.deferred) == config  # nothing else changes

    configured = load_config(None, environ={}, overrides={"deferred.after": "2.5"})
    assert demo_config(configured) == configured  # the user's [deferred] wins, its format too
    assert demo_config(config, "rasa-rest") == config  # the Rasa widget speaks no Teneo interim


def test_demo_slow_seconds_is_configurable() -> None:
    config = load_config(None, environ={"GATEWAY_DEMO_SLOW_SECONDS": "0.5"})
    assert config.demo == DemoConfig(slow_seconds=0.5)
    with pytest.raises(ConfigError, match=re.escape("demo.slow_seconds: expected seconds >= 0, got -1.0")):
        load_config(None, environ={}, overrides={"demo.slow_seconds": "-1"})


async def test_turns_count_up_through_the_gateway(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(make_config(await start_upstream(create_bot_app())))
    turns = [(await say(gw.client, "/", text))[0] for text in ("one", "two", "three")]

    assert [t["output"]["parameters"]["turn"] for t in turns] == ["1", "2", "3"]
    assert len({t["sessionId"] for t in turns}) == 1


@pytest.mark.slow
async def test_session_gateway_demo_answers_a_turn(spawn_gateway: SpawnGateway) -> None:
    script = shutil.which("session-gateway", path=str(Path(sys.executable).parent))
    program = (script,) if script else (sys.executable, "-m", "gateway")
    demo = await spawn_gateway("demo", program=program)

    async with aiohttp.ClientSession() as session:
        answer, issued = await say(session, f"{demo.url}/", "hi")

    assert answer["status"] == 0
    assert answer["input"]["text"] == "hi"
    assert answer["output"]["text"] == "Hello! You said: hi"
    assert issued is not None and answer["sessionId"] == issued

    demo.terminate()
    assert await demo.exit_code(timeout=10) == 0


@pytest.mark.slow
async def test_session_gateway_demo_with_the_rasa_bot_places_its_own_sender(
    spawn_gateway: SpawnGateway,
) -> None:
    demo = await spawn_gateway("demo", "--bot", "rasa-rest")
    url = f"{demo.url}/webhooks/rest/webhook"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"sender": "someone-else", "message": "hi"}) as response:
            first = await response.json()
            sid = response.headers["X-Session-Id"]
            assert response.headers["X-Session-New"] == "first"
        headers = {"X-Teneo-Session": f"JSESSIONID={sid}"}
        async with session.post(url, json={"message": "again"}, headers=headers) as response:
            second = await response.json()
    assert first[0] == {"recipient_id": sid, "text": "Hello! You said: hi"}
    assert second[0]["recipient_id"] == sid and second[1]["custom"]["turn"] == 2
    demo.terminate()
    assert await demo.exit_code(timeout=10) == 0


@pytest.mark.slow
async def test_session_gateway_demo_answers_think_late(spawn_gateway: SpawnGateway) -> None:
    """`session-gateway demo` turns [deferred] on: "think" gets the Teneo-shaped interim, then its pick-up."""
    demo = await spawn_gateway("demo", GATEWAY_DEMO_SLOW_SECONDS="1.5")
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.get(f"{demo.url}/", params={"userinput": "think"}) as response:
            interim = await response.json()
            token = response.headers["X-Session-Deferred"]
        assert time.monotonic() - started >= 1.0  # demo: deferred.after = 1.0
        async with session.get(f"{demo.url}/_gateway/deferred/{token}") as response:
            answer = await response.json()
            assert response.headers["X-Session-New"] == "first"

    assert interim["output"]["parameters"]["gateway_deferred"] == token
    assert interim["output"]["text"] == DeferredConfig().message
    assert answer["output"]["text"] == "I thought about it for 1.5 seconds. Done!"
    demo.terminate()
    assert await demo.exit_code(timeout=10) == 0
