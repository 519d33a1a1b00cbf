"""A bot that gives a live conversation a new id (Tomcat's changeSessionId()): restart or rename."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from aiohttp import web
from gateway_helpers import LOOPBACK
from session_helpers import END_REASONS, START_REASONS, FakeClock, StartRig, session_control


class RotatingBot:
    """Cookie sessions holding a turn counter; `?rotate=1` moves the conversation to a new id, as
    HttpServletRequest.changeSessionId() does; `?control=<v>` answers X-Session-Control: <v>."""

    def __init__(self) -> None:
        self.turns: dict[str, int] = {}
        self.cookies_seen: list[str | None] = []
        self.url = ""

    def start_session(self) -> str:
        session_id = secrets.token_hex(8).upper()
        self.turns[session_id] = 0
        return session_id

    async def handle(self, request: web.Request) -> web.Response:
        session_id = request.cookies.get("JSESSIONID")
        self.cookies_seen.append(session_id)
        if request.query.get("stateless"):  # an answer that starts no session
            return web.json_response({"session": None})
        issued = None
        if session_id not in self.turns:
            session_id = issued = self.start_session()
        assert session_id is not None
        if request.query.get("rotate"):
            turn = self.turns.pop(session_id)
            session_id = issued = secrets.token_hex(8).upper()
            self.turns[session_id] = turn
        self.turns[session_id] += 1
        response = web.json_response({"session": session_id, "turn": self.turns[session_id]})
        if issued:
            response.headers["Set-Cookie"] = f"JSESSIONID={issued}; Path=/; HttpOnly"
        return response


@pytest.fixture
async def bot(aiohttp_server: Any) -> RotatingBot:
    rotating = RotatingBot()
    app = web.Application(middlewares=[session_control])
    app.router.add_route("*", "/{tail:.*}", rotating.handle)
    server = await aiohttp_server(app)
    rotating.url = f"http://{LOOPBACK}:{server.port}"
    return rotating


def _counts(rig: Any) -> tuple[float, float]:
    return (
        sum(rig.started(r) or 0 for r in START_REASONS),
        sum(rig.ended(r) or 0 for r in END_REASONS),
    )


async def test_by_default_a_new_bot_id_is_a_restart(bot: RotatingBot, rig_for: StartRig) -> None:
    rig = await rig_for(bot.url)
    first = await rig.send("/")
    old = first.session_id
    rotated = await rig.send("/?rotate=1", header=old)
    assert rotated.new == "upstream" and rotated.session_id not in (None, old)
    assert rig.started("upstream") == 1 and rig.ended("upstream") == 1
    assert rig.metric("sessions_renamed_total") == 0


async def test_rename_keeps_the_conversation_and_the_old_id_leads_to_the_new(
    bot: RotatingBot,
    rig_for: StartRig,
    clock: FakeClock,
) -> None:
    rig = await rig_for(bot.url, on_bot_new_id="rename")
    first = await rig.send("/")
    old = first.session_id
    assert old is not None and first.new == "first"
    assert (await rig.send("/", header=old)).json["turn"] == 2
    clock.advance(300)
    rotated = await rig.send("/?rotate=1", header=old)
    new = rotated.session_id
    assert new is not None and new != old and rotated.json == {"session": new, "turn": 3}
    assert rotated.new is None  # no restart to tell the widget about
    assert rig.metric("sessions_renamed_total") == 1
    assert _counts(rig) == (1, 0) and rig.active == 1
    affinity = rotated.headers["X-Gateway-Session"]
    assert affinity and affinity != first.headers["X-Gateway-Session"]  # signed over the new id
    # Another tab still holding the old id continues the same conversation, under the new id.
    other_tab = await rig.send("/", header=old)
    assert other_tab.new is None and other_tab.session_id == new and other_tab.json["turn"] == 4
    assert bot.cookies_seen[-1] == new
    # The idle deadline carried over (counted from the last request), and the session then expires once.
    clock.advance(599)
    assert (await rig.send("/", header=new)).json["turn"] == 5
    clock.advance(601)
    expired = await rig.send("/", header=new)
    assert expired.new == "expired" and expired.json["turn"] == 1
    assert rig.ended("idle") == 1 and rig.metric("sessions_renamed_total") == 1


async def test_the_bot_can_ask_for_a_rename_per_response(bot: RotatingBot, rig_for: StartRig) -> None:
    rig = await rig_for(bot.url)  # on_bot_new_id = "restart"
    old = (await rig.send("/")).session_id
    rotated = await rig.send("/?rotate=1&control=rename", header=old)
    assert rotated.new is None and rotated.session_id != old and rotated.json["turn"] == 2
    assert "X-Session-Control" not in rotated.headers  # the bot's control never reaches the client
    assert rig.metric("sessions_renamed_total") == 1 and _counts(rig) == (1, 0)


async def test_an_explicit_rename_of_an_id_the_gateway_does_not_know_adopts_the_new_one(
    bot: RotatingBot,
    rig_for: StartRig,
) -> None:
    known_to_the_bot = bot.start_session()  # e.g. started before a gateway restart
    rig = await rig_for(bot.url)
    rotated = await rig.send("/?rotate=1&control=rename", header=known_to_the_bot)
    new = rotated.session_id
    assert rotated.new is None and new not in (None, known_to_the_bot) and rotated.json["turn"] == 1
    assert rig.started("adopted") == 1 and _counts(rig) == (1, 0)
    follow = await rig.send("/", header=known_to_the_bot)  # the old id leads to the new one
    assert follow.session_id == new and follow.new is None and follow.json["turn"] == 2


async def test_without_a_rename_an_unknown_id_the_bot_replaces_is_unknown(
    bot: RotatingBot,
    rig_for: StartRig,
) -> None:
    rig = await rig_for(bot.url, on_bot_new_id="rename")  # the option covers live sessions only
    reply = await rig.send("/", header="NEVERSEEN01")
    assert reply.new == "unknown" and rig.metric("sessions_renamed_total") == 0


async def test_a_response_without_a_session_carries_no_affinity(bot: RotatingBot, rig_for: StartRig) -> None:
    rig = await rig_for(bot.url)
    first = await rig.send("/")
    assert first.session_id and first.headers["X-Gateway-Session"].startswith("GatewayAffinity=")
    ended = await rig.send("/?control=end", header=first.session_id)
    assert ended.headers.get("X-Session-Id") == first.session_id  # the session this answer belongs to
    nothing = await rig.send("/endsession", method="POST")  # no session at all: the gateway's logout answer
    assert "X-Gateway-Session" not in nothing.headers and "X-Session-Id" not in nothing.headers
    assert not any(c.startswith("GatewayAffinity=") for c in nothing.set_cookies)
