"""End-to-end session tests (issue 3's wire contract): the gateway before the demo bot or test bots.

Time comes from a FakeClock shared by the gateway and the demo bot, so expiry never waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tracemalloc
import uuid
from typing import Any

import pytest
from aiohttp import web
from gateway_helpers import eventually, raw_exchange
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry
from session_helpers import (
    CARRIERS,
    END_REASONS,
    START_REASONS,
    Bot,
    FakeClock,
    HeaderEchoBot,
    P,
    StartDemo,
    StartEcho,
    StartRig,
    carry,
)

from gateway.app import admin_app_for
from gateway.config import load_config
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import SessionManager
from gateway.sessions.store.memory import MemoryStore
from gateway.upstream.upstreams import Upstreams

TENEO_ID = "31992FA776A3XXXXX1031B5F"
LOGOUT = {"status": 1, "message": "logout"}


def names(seen_cookies: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in seen_cookies]


# --- carriage in ---------------------------------------------------------------------------------------


async def test_teneo_example_reaches_the_bot_as_its_two_cookies(
    start_echo: StartEcho, rig_for: StartRig
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url)
    reply = await rig.send("/", headers={"X-Teneo-Session": f"JSESSIONID={TENEO_ID}; FOO=BAR"})
    assert reply.status == 200
    assert sorted(bot.last.cookies) == [("FOO", "BAR"), ("JSESSIONID", TENEO_ID)]
    assert "X-Teneo-Session" not in bot.last.headers
    # Unknown to the gateway, accepted by the (stateless) bot: adopted, no signal.
    assert reply.session_id == TENEO_ID
    assert reply.new is None
    assert rig.started("adopted") == 1


async def test_client_cookies_merge_with_header_pairs_header_wins_affinity_removed(
    start_echo: StartEcho, rig_for: StartRig
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url)
    await rig.send(
        "/",
        headers={
            "Cookie": "FOO=client; BAZ=1; GatewayAffinity=default.AAAA",
            "X-Teneo-Session": "JSESSIONID=ABC123; FOO=BAR; GatewayAffinity=default.BBBB",
        },
    )
    cookies = bot.last.cookies
    assert sorted(cookies) == [("BAZ", "1"), ("FOO", "BAR"), ("JSESSIONID", "ABC123")]
    assert len(bot.last.headers.getall("Cookie")) == 1
    assert "X-Teneo-Session" not in bot.last.headers


async def test_session_cookie_in_cookie_header_is_replaced_by_the_resolved_id(
    start_echo: StartEcho, rig_for: StartRig
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url)
    # The header's id wins over the Cookie header's; the bot sees exactly one JSESSIONID.
    await rig.send(
        "/", headers={"Cookie": "JSESSIONID=FROMCOOKIE; A=1", "X-Teneo-Session": "JSESSIONID=FROMHEADER"}
    )
    assert sorted(bot.last.cookies) == [("A", "1"), ("JSESSIONID", "FROMHEADER")]


@pytest.mark.parametrize("carrier", ["header", "cookie", "path", "query"])
async def test_demo_turns_continue_over_one_carrier(demo: Bot, rig_for: StartRig, carrier: str) -> None:
    rig = await rig_for(demo.url, query_param="sid")
    first = await rig.send("/?userinput=hello")
    sid = first.session_id
    assert sid is not None and first.turn == 1 and first.new == "first"
    assert first.json["output"]["parameters"]["gatewaySignal"] == "first"  # the bot was told too
    turns = [first.turn]
    for _ in range(2):
        reply = await rig.send(**carry(carrier, sid))
        assert reply.status == 200
        assert reply.session_id == sid
        assert reply.new is None
        assert "gatewaySignal" not in reply.json["output"]["parameters"]
        turns.append(reply.turn)
    assert turns == [1, 2, 3]
    # What the bot saw: the session as its cookie, the parameter gone from the URL.
    assert ("JSESSIONID", sid) in demo.last.cookies
    assert "jsessionid" not in demo.last.raw_path and "sid=" not in demo.last.raw_path
    assert demo.last.raw_path == "/?userinput=x"
    assert rig.metric("session_carrier_total", carrier=carrier) == 2
    assert rig.metric("session_carrier_total", carrier="none") == 1
    assert rig.started("first") == 1 and rig.active == 1


async def test_demo_turns_continue_across_mixed_carriers(demo: Bot, rig_for: StartRig) -> None:
    rig = await rig_for(demo.url, query_param="sid")
    sid = (await rig.send()).session_id
    assert sid is not None
    turns = [(await rig.send(**carry(c, sid))).turn for c in ("header", "cookie", "path", "query")]
    assert turns == [2, 3, 4, 5]


async def test_query_carriage_is_off_by_default(start_echo: StartEcho, rig_for: StartRig) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url)
    reply = await rig.send("/chat?sid=ABC&a=1")
    assert bot.last.raw_path == "/chat?sid=ABC&a=1"  # untouched: not a session parameter
    assert bot.last.cookie is None
    assert reply.session_id is None
    assert rig.metric("session_carrier_total", carrier="none") == 1


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/chat;jsessionid=ABC?userinput=hi", "/chat?userinput=hi"),
        ("/chat;JSESSIONID=ABC", "/chat"),
        ("/a;jsessionid=ABC/b?x=1", "/a/b?x=1"),
        ("/chat?sid=ABC&userinput=hi", "/chat?userinput=hi"),
        ("/chat?userinput=hi&sid=ABC", "/chat?userinput=hi"),
        ("/chat?sid=ABC", "/chat"),
    ],
    ids=[
        "path-with-query",
        "path-uppercase-name",
        "path-middle-segment",
        "query-first",
        "query-last",
        "query-only",
    ],
)
async def test_session_parameters_are_removed_from_the_forwarded_url(
    start_echo: StartEcho, rig_for: StartRig, target: str, forwarded: str
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url, query_param="sid")
    reply = await rig.send(target)
    assert reply.status == 200
    assert bot.last.raw_path == forwarded
    assert bot.last.cookies == [("JSESSIONID", "ABC")]


@pytest.mark.parametrize(
    ("kwargs", "expected", "carrier"),
    [
        ({"path": "/;jsessionid=P?sid=Q", "header": "H", "cookie": "C"}, "H", "header"),
        ({"path": "/;jsessionid=P?sid=Q", "cookie": "C"}, "C", "cookie"),
        ({"path": "/;jsessionid=P?sid=Q"}, "P", "path"),
        ({"path": "/?sid=Q"}, "Q", "query"),
    ],
    ids=["header-first", "then-cookie", "then-path", "then-query"],
)
async def test_carrier_precedence(
    start_echo: StartEcho, rig_for: StartRig, kwargs: dict[str, Any], expected: str, carrier: str
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url, query_param="sid")
    reply = await rig.send(**kwargs)
    assert bot.last.cookies == [("JSESSIONID", expected)]
    assert bot.last.raw_path == "/"
    assert reply.session_id == expected
    assert rig.metric("session_carrier_total", carrier=carrier) == 1


# --- carriage out and the Teneo protocol ---------------------------------------------------------------


async def test_responses_carry_gateway_session_set_cookie_and_session_id(
    demo: Bot, rig_for: StartRig
) -> None:
    rig = await rig_for(demo.url)
    first = await rig.send()
    sid = first.json["sessionId"]
    assert first.session_id == sid
    pair = first.headers["X-Gateway-Session"]
    assert pair.startswith("GatewayAffinity=") and len(pair) > len("GatewayAffinity=")
    assert pair.split(";")[0] == pair  # Teneo Web Chat keeps value.split(';')[0]
    affinity = first.set_cookie("GatewayAffinity")
    assert affinity is not None and affinity.split(";")[0] == pair
    # The bot's own Set-Cookie passes through.
    bot_cookie = first.set_cookie("JSESSIONID")
    assert bot_cookie is not None and bot_cookie.startswith(f"JSESSIONID={sid};")
    again = await rig.send(header=sid)
    assert again.headers["X-Gateway-Session"] == pair  # stable for one session
    assert again.session_id == sid


async def test_a_client_following_the_teneo_protocol_keeps_its_conversation(
    demo: Bot, rig_for: StartRig
) -> None:
    rig = await rig_for(demo.url)
    first = await rig.send("/?userinput=hi")
    assert first.turn == 1
    # Teneo Web Chat: header mode when X-Gateway-Session is present; it keeps value.split(';')[0].
    gateway_pair = first.headers["X-Gateway-Session"].split(";")[0]
    session_id = first.json["sessionId"]
    turns = []
    for text in ("two", "three"):
        reply = await rig.send(
            f"/?userinput={text}", headers={"X-Teneo-Session": f"JSESSIONID={session_id}; {gateway_pair}"}
        )
        assert reply.status == 200 and reply.new is None
        assert reply.json["sessionId"] == session_id
        turns.append(reply.turn)
        assert "X-Teneo-Session" not in demo.last.headers
        assert names(demo.last.cookies) == ["JSESSIONID"]  # the affinity pair never reaches the bot
        gateway_pair = reply.headers["X-Gateway-Session"].split(";")[0]
    assert turns == [2, 3]
    assert rig.metric("session_carrier_total", carrier="header") == 2


@pytest.mark.parametrize("where", ["header", "cookie"])
async def test_a_tampered_affinity_value_does_not_break_the_conversation(
    demo: Bot, rig_for: StartRig, where: str
) -> None:
    rig = await rig_for(demo.url)
    first = await rig.send()
    sid = first.json["sessionId"]
    genuine = first.headers["X-Gateway-Session"]
    forged = "GatewayAffinity=other-replica.AAAAAAAAAAAAAAAA"
    if where == "header":
        reply = await rig.send(headers={"X-Teneo-Session": f"JSESSIONID={sid}; {forged}"})
    else:
        reply = await rig.send(headers={"Cookie": f"JSESSIONID={sid}; {forged}"})
    assert reply.status == 200
    assert reply.turn == 2 and reply.new is None and reply.session_id == sid
    assert reply.headers["X-Gateway-Session"] == genuine  # not trusted: the gateway answers its own value
    assert "GatewayAffinity" not in names(demo.last.cookies)


# --- inactivity and lifetime expiry ---------------------------------------------------------------------


@pytest.mark.parametrize("carrier", ["header", "cookie", "path"])
async def test_idle_expiry_by_request(demo: Bot, rig_for: StartRig, clock: FakeClock, carrier: str) -> None:
    rig = await rig_for(demo.url)
    sid = (await rig.send()).session_id
    assert sid is not None
    clock.advance(599)
    assert (await rig.send(**carry(carrier, sid))).turn == 2  # just inside the idle timeout
    clock.advance(601)
    reply = await rig.send(**carry(carrier, sid))
    seen = demo.last
    assert seen.headers.getall("X-Session-New") == ["expired"]
    assert seen.headers.getall("X-Session-Previous") == [sid]
    assert "JSESSIONID" not in names(seen.cookies)  # the stale cookie is dropped before forwarding
    assert "jsessionid" not in seen.raw_path
    assert reply.new == "expired"
    assert reply.turn == 1
    assert reply.session_id not in (None, sid)
    assert reply.json["output"]["parameters"]["gatewaySignal"] == "expired"
    assert rig.ended("idle") == 1 and rig.started("expired") == 1 and rig.active == 1
    # The new session continues without a signal.
    assert reply.session_id is not None
    nxt = await rig.send(**carry(carrier, reply.session_id))
    assert (nxt.turn, nxt.new, nxt.session_id) == (2, None, reply.session_id)
    assert "X-Session-New" not in demo.last.headers and "X-Session-Previous" not in demo.last.headers


async def test_sweeper_expires_idle_sessions_without_a_request(
    demo: Bot, rig_for: StartRig, clock: FakeClock
) -> None:
    rig = await rig_for(demo.url, sweep_interval=0.05)
    a = (await rig.send()).session_id
    b = (await rig.send()).session_id
    assert a and b and rig.active == 2
    bot_requests = len(demo.seen)
    clock.advance(601)
    await eventually(lambda: rig.active == 0)
    assert len(demo.seen) == bot_requests  # no request was needed
    assert rig.ended("idle") == 2
    assert (rig.metric("expiry_sweep_duration_seconds_count") or 0) >= 1
    assert (rig.metric("expiry_sweep_last_timestamp_seconds") or 0) > 0
    # A late request with a swept id: the tombstone says expired, not unknown.
    late = await rig.send(header=a)
    assert late.new == "expired" and late.turn == 1 and late.session_id != a
    assert demo.last.headers.getall("X-Session-New") == ["expired"]
    assert demo.last.headers.getall("X-Session-Previous") == [a]
    assert rig.started("expired") == 1
    # A never-seen id: offered to the bot (it may be one to adopt); the bot rejects it with a new id.
    never = await rig.send(header="NEVERSEEN0001")
    assert ("JSESSIONID", "NEVERSEEN0001") in demo.last.cookies
    assert "X-Session-New" not in demo.last.headers  # not known before forwarding
    assert never.new == "unknown" and never.turn == 1 and never.session_id != "NEVERSEEN0001"
    assert rig.started("unknown") == 1
    assert rig.active == 2


async def test_absolute_timeout_gives_lifetime(demo: Bot, rig_for: StartRig, clock: FakeClock) -> None:
    rig = await rig_for(demo.url, absolute_timeout=1000)
    sid = (await rig.send()).session_id
    assert sid is not None
    for step, turn in ((500, 2), (499, 3)):
        clock.advance(step)
        assert (await rig.send(header=sid)).turn == turn
    clock.advance(1)  # 1000 s after the start, though only 1 s idle
    reply = await rig.send(header=sid)
    assert reply.new == "lifetime" and reply.turn == 1 and reply.session_id != sid
    assert demo.last.headers.getall("X-Session-New") == ["lifetime"]
    assert demo.last.headers.getall("X-Session-Previous") == [sid]
    assert rig.ended("lifetime") == 1 and rig.started("lifetime") == 1
    assert rig.ended("idle") == 0


async def test_sweeper_ends_sessions_at_their_lifetime(
    demo: Bot, rig_for: StartRig, clock: FakeClock
) -> None:
    rig = await rig_for(demo.url, absolute_timeout=1000, sweep_interval=0.05)
    sid = (await rig.send()).session_id
    assert sid is not None
    for _ in range(2):
        clock.advance(499)
        assert (await rig.send(header=sid)).new is None
    clock.advance(2)  # 1000 s after the start, 2 s idle
    await eventually(lambda: rig.active == 0)
    assert rig.ended("lifetime") == 1 and rig.ended("idle") == 0
    assert (await rig.send(header=sid)).new == "lifetime"


async def test_tombstones_are_forgotten_after_their_ttl(
    start_demo: StartDemo, rig_for: StartRig, clock: FakeClock
) -> None:
    demo = await start_demo(idle_timeout=600)  # the bot forgets at the same idle timeout
    rig = await rig_for(demo.url, tombstone_ttl=100)
    sid = (await rig.send()).session_id
    assert sid is not None
    clock.advance(601)
    assert (await rig.send(header=sid)).new == "expired"
    clock.advance(50)
    assert (await rig.send(header=sid)).new is None  # the tombstone names its successor: continued
    clock.advance(101)
    reply = await rig.send(header=sid)
    assert reply.new == "unknown"  # forgotten: neither the gateway nor the bot knows it


# --- adoption, and the bot replacing sessions -----------------------------------------------------------


async def test_adoption_after_a_gateway_restart(demo: Bot, rig_for: StartRig) -> None:
    before = await rig_for(demo.url)
    first = await before.send()
    sid = first.json["sessionId"]
    pair = first.headers["X-Gateway-Session"]
    assert (await before.send(header=sid)).turn == 2
    after = await rig_for(demo.url)  # a fresh process: new store, new registry, new affinity secret
    reply = await after.send(headers={"X-Teneo-Session": f"JSESSIONID={sid}; {pair}"})
    assert reply.status == 200
    assert reply.turn == 3 and reply.new is None and reply.session_id == sid
    assert "X-Session-New" not in demo.last.headers
    assert after.started("adopted") == 1
    assert all(after.started(r) == 0 for r in START_REASONS if r != "adopted")
    assert after.active == 1
    nxt = await after.send(header=sid)
    assert (nxt.turn, nxt.new) == (4, None)
    assert after.started("adopted") == 1


async def test_concurrent_requests_adopt_once(demo: Bot, rig_for: StartRig) -> None:
    before = await rig_for(demo.url)
    sid = (await before.send()).session_id
    assert sid is not None
    after = await rig_for(demo.url)
    replies = await asyncio.gather(*(after.send(header=sid) for _ in range(3)))
    assert {r.session_id for r in replies} == {sid}
    assert sorted(r.turn for r in replies) == [2, 3, 4]
    assert all(r.new is None for r in replies)
    assert after.started("adopted") == 1 and after.active == 1


async def test_bot_replacing_a_live_session_signals_upstream(
    start_echo: StartEcho, rig_for: StartRig
) -> None:
    bot = await start_echo(rotate=True)
    rig = await rig_for(bot.url)
    first = await rig.send()
    a = first.session_id
    assert a is not None and first.new == "first"
    second = await rig.send(header=a)
    b = second.session_id
    assert second.new == "upstream"
    assert b is not None and b != a
    bot_cookie = second.set_cookie("JSESSIONID")
    assert bot_cookie is not None and bot_cookie.startswith(f"JSESSIONID={b};")
    assert rig.ended("upstream") == 1 and rig.started("upstream") == 1 and rig.active == 1
    # The replaced id names its successor: a late request with it (another tab) continues b.
    await rig.send(header=a)
    assert bot.last.cookies == [("JSESSIONID", b)]


# --- the bot's controls -------------------------------------------------------------------------------


async def test_bot_control_end(demo: Bot, rig_for: StartRig) -> None:
    rig = await rig_for(demo.url)
    sid = (await rig.send()).session_id
    assert sid is not None
    ending = await rig.send("/?userinput=bye&control=end", header=sid)
    assert ending.status == 200 and ending.turn == 2
    assert "X-Session-Control" not in ending.headers
    assert rig.ended("bot") == 1 and rig.active == 0
    nxt = await rig.send(header=sid)
    assert nxt.new == "ended" and nxt.turn == 1 and nxt.session_id != sid
    assert demo.last.headers.getall("X-Session-New") == ["ended"]
    assert demo.last.headers.getall("X-Session-Previous") == [sid]
    assert "JSESSIONID" not in names(demo.last.cookies)
    assert rig.started("ended") == 1


async def test_bot_control_timeout_sets_that_sessions_idle_timeout(
    demo: Bot, rig_for: StartRig, clock: FakeClock
) -> None:
    rig = await rig_for(demo.url)
    short = await rig.send("/?userinput=a&control=timeout%3D5")
    assert "X-Session-Control" not in short.headers
    other = await rig.send()
    assert short.session_id and other.session_id
    clock.advance(4)
    assert (await rig.send(header=short.session_id)).new is None  # 4 s idle: still alive
    clock.advance(6)
    expired = await rig.send(header=short.session_id)
    assert expired.new == "expired" and expired.turn == 1
    continued = await rig.send(header=other.session_id)
    assert continued.new is None and continued.turn == 2
    assert rig.ended("idle") == 1


async def test_bot_control_timeout_is_enforced_by_the_sweeper(
    demo: Bot, rig_for: StartRig, clock: FakeClock
) -> None:
    rig = await rig_for(demo.url, sweep_interval=0.05)
    await rig.send("/?userinput=a&control=timeout%3D5")
    await rig.send()
    clock.advance(6)
    await eventually(lambda: rig.active == 1)
    assert rig.ended("idle") == 1


# --- end session ----------------------------------------------------------------------------------------


def assert_end_headers(reply: Any) -> None:
    assert reply.headers.getall("X-Gateway-Session") == [""]
    affinity = reply.set_cookie("GatewayAffinity")
    assert affinity is not None
    assert affinity.startswith("GatewayAffinity=;")
    assert "Max-Age=0" in affinity


@pytest.mark.parametrize("carrier", ["header", "cookie", "path"])
async def test_endsession_is_forwarded_and_ends_the_session(
    demo: Bot, rig_for: StartRig, carrier: str
) -> None:
    rig = await rig_for(demo.url)
    sid = (await rig.send()).session_id
    assert sid is not None
    assert (await rig.send(header=sid)).turn == 2
    reply = await rig.send(**carry(carrier, sid, path="/endsession", query=""), method="POST")
    assert reply.status == 200
    assert reply.json == LOGOUT  # the bot's answer
    assert demo.last.method == "POST" and demo.last.raw_path == "/endsession"
    assert ("JSESSIONID", sid) in demo.last.cookies
    assert_end_headers(reply)
    assert rig.ended("client") == 1 and rig.active == 0
    nxt = await rig.send(header=sid)
    assert nxt.new == "ended" and nxt.turn == 1
    assert rig.started("ended") == 1
    # The bot really freed its session: a fresh gateway offering the old id gets it rejected.
    fresh = await rig_for(demo.url)
    assert (await fresh.send(header=sid)).new == "unknown"


@pytest.mark.parametrize("status", [404, 405])
async def test_endsession_fallback_for_a_bot_without_the_route(
    start_echo: StartEcho, rig_for: StartRig, status: int
) -> None:
    bot = await start_echo(end_status=status)
    rig = await rig_for(bot.url)
    assert (await rig.send(header="LIVE0001")).session_id == "LIVE0001"  # adopted by the stateless bot
    reply = await rig.send("/api/endsession", method="POST", header="LIVE0001")
    assert bot.last.raw_path == "/api/endsession"  # it was forwarded
    assert reply.status == 200
    assert reply.json == LOGOUT
    assert_end_headers(reply)
    assert rig.ended("client") == 1 and rig.active == 0
    await rig.send(header="LIVE0001")
    # The stateless bot starts no session of its own, but it is told why this is a new conversation.
    assert bot.last.headers.getall("X-Session-New") == ["ended"]
    assert bot.last.headers.getall("X-Session-Previous") == ["LIVE0001"]
    assert "JSESSIONID" not in names(bot.last.cookies)


async def test_endsession_demo_bot_answers_get_with_405_and_the_gateway_falls_back(
    demo: Bot, rig_for: StartRig
) -> None:
    rig = await rig_for(demo.url)
    sid = (await rig.send()).session_id
    assert sid is not None
    reply = await rig.send("/endsession", header=sid)  # GET: the demo bot answers 405
    assert reply.status == 200 and reply.json == LOGOUT
    assert rig.ended("client") == 1


async def test_endsession_without_a_session_changes_nothing(demo: Bot, rig_for: StartRig) -> None:
    rig = await rig_for(demo.url)
    live = (await rig.send()).session_id
    assert live is not None
    bot_requests = len(demo.seen)
    before = {r: rig.ended(r) for r in END_REASONS} | {r: rig.started(r) for r in START_REASONS}
    reply = await rig.send("/endsession", method="POST")
    assert reply.status == 200 and reply.json == LOGOUT
    assert len(demo.seen) == bot_requests  # the bot was not contacted
    assert {r: rig.ended(r) for r in END_REASONS} | {r: rig.started(r) for r in START_REASONS} == before
    assert rig.active == 1
    assert (await rig.send(header=live)).turn == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"header": "UNKNOWN0001"}, {"cookie": "UNKNOWN0002"}, {"path": "/endsession;jsessionid=UNKNOWN0003"}],
    ids=["header", "cookie", "path"],
)
async def test_endsession_for_an_unknown_id_is_forwarded_and_remembered(
    demo: Bot, rig_for: StartRig, kwargs: dict[str, str]
) -> None:
    """A gateway restart (memory store) forgets sessions the bot still holds: "End chat" must reach the bot."""
    rig = await rig_for(demo.url)
    live = (await rig.send()).session_id
    assert live is not None
    unknown = next(iter(kwargs.values())).rpartition("=")[2]
    before = {r: rig.ended(r) for r in END_REASONS} | {r: rig.started(r) for r in START_REASONS}
    path = kwargs.get("path", "/endsession")
    carried = {k: v for k, v in kwargs.items() if k != "path"}
    reply = await rig.send(path, method="POST", **carried)
    assert reply.status == 200 and reply.json == LOGOUT
    assert demo.last.raw_path.startswith("/endsession")
    assert ("JSESSIONID", unknown) in demo.last.cookies  # the bot decides
    assert reply.headers["X-Gateway-Session"] == ""  # the affinity cookie is expired, as for a known end
    assert "X-Session-Id" not in reply.headers
    # Counted nowhere: the gateway had no record of it.
    assert {r: rig.ended(r) for r in END_REASONS} | {r: rig.started(r) for r in START_REASONS} == before
    assert rig.active == 1
    # The id is remembered as ended: its next request hears so, and the bot is not offered it again.
    nxt = await asyncio.wait_for(rig.send(header=unknown), 3)
    assert nxt.status == 200 and nxt.new == "ended" and nxt.turn == 1
    assert ("JSESSIONID", unknown) not in demo.last.cookies
    assert (await rig.send(header=live)).turn == 2


async def test_endsession_with_an_expired_session(demo: Bot, rig_for: StartRig, clock: FakeClock) -> None:
    rig = await rig_for(demo.url)
    sid = (await rig.send()).session_id
    assert sid is not None
    clock.advance(601)
    reply = await rig.send("/endsession", method="POST", header=sid)
    assert reply.status == 200 and reply.json == LOGOUT
    # Forwarded all the same: a bot whose own timeout is longer still holds the conversation.
    assert demo.last.raw_path == "/endsession" and ("JSESSIONID", sid) in demo.last.cookies
    assert rig.ended("idle") == 1 and rig.ended("client") == 0
    assert rig.active == 0
    # A later request with the same id is told it expired, without waiting for anything.
    nxt = await asyncio.wait_for(rig.send(header=sid), 3)
    assert nxt.new == "expired" and nxt.turn == 1
    assert rig.started("expired") == 1


# --- gateway-issued sessions ----------------------------------------------------------------------------


async def test_gateway_issued_sessions_against_a_stateless_bot(
    start_echo: StartEcho, rig_for: StartRig
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url, issuer="gateway")
    first = await rig.send()
    sid = first.session_id
    assert sid is not None and len(sid) == 36
    assert uuid.UUID(sid).version == 4 and str(uuid.UUID(sid)) == sid
    assert first.new == "first"
    assert bot.last.headers.getall("X-Session-Id") == [sid]
    assert bot.last.headers.getall("X-Session-New") == ["first"]
    own = first.set_cookie("JSESSIONID")
    assert own is not None and own.startswith(f"JSESSIONID={sid};")
    assert first.headers["X-Gateway-Session"].startswith("GatewayAffinity=")
    for kwargs in ({"cookie": sid}, {"header": sid}, {"path": f"/;jsessionid={sid}"}):
        reply = await rig.send(**kwargs)
        assert reply.session_id == sid and reply.new is None
        assert reply.set_cookie("JSESSIONID") == own  # every response renews the gateway's own cookie
        assert bot.last.headers.getall("X-Session-Id") == [sid]
        assert "X-Session-New" not in bot.last.headers
    assert rig.started("first") == 1 and rig.active == 1


async def test_gateway_issued_mode_never_adopts_a_client_chosen_id(
    start_echo: StartEcho, rig_for: StartRig
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url, issuer="gateway")
    chosen = str(uuid.uuid4())  # even a well-formed UUID the gateway did not mint
    reply = await rig.send(header=chosen)
    assert reply.new == "unknown"
    assert reply.session_id not in (None, chosen)
    assert bot.last.headers.getall("X-Session-Id") == [reply.session_id]
    assert bot.last.headers.getall("X-Session-New") == ["unknown"]
    assert rig.started("unknown") == 1 and rig.started("adopted") == 0


async def test_gateway_issued_expiry_and_end(
    start_echo: StartEcho, rig_for: StartRig, clock: FakeClock
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url, issuer="gateway")
    sid = (await rig.send()).session_id
    assert sid is not None
    clock.advance(601)
    reply = await rig.send(header=sid)
    new = reply.session_id
    assert reply.new == "expired" and new not in (None, sid)
    assert bot.last.headers.getall("X-Session-New") == ["expired"]
    assert bot.last.headers.getall("X-Session-Previous") == [sid]
    assert bot.last.headers.getall("X-Session-Id") == [new]
    assert new is not None
    end = await rig.send("/endsession", method="POST", header=new)
    assert bot.last.headers.getall("X-Session-Id") == [new]
    assert_end_headers(end)
    own = end.set_cookie("JSESSIONID")
    assert own is not None and "Max-Age=0" in own  # the gateway's own session cookie expires too
    assert rig.ended("client") == 1 and rig.active == 0
    assert (await rig.send(header=new)).new == "ended"


async def test_gateway_issued_bot_control_end(start_echo: StartEcho, rig_for: StartRig) -> None:
    bot = await start_echo(response_headers={"X-Session-Control": "end"})
    rig = await rig_for(bot.url, issuer="gateway")
    first = await rig.send()
    assert "X-Session-Control" not in first.headers
    assert rig.ended("bot") == 1 and rig.active == 0
    assert first.session_id is not None
    assert (await rig.send(header=first.session_id)).new == "ended"


@pytest.mark.parametrize("issuer", ["upstream", "gateway"])
async def test_clients_cannot_forge_the_gateways_signals(
    start_echo: StartEcho, rig_for: StartRig, issuer: str
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url, issuer=issuer)
    forged = {"X-Session-New": "forged", "X-Session-Previous": "VICTIM", "X-Session-Id": "VICTIM"}
    first = await rig.send(headers=forged)
    assert bot.last.headers.getall("X-Session-New") == ["first"]
    assert "X-Session-Previous" not in bot.last.headers
    if issuer == "gateway":
        assert first.session_id is not None
        assert bot.last.headers.getall("X-Session-Id") == [first.session_id]
        sid = first.session_id
    else:
        sid = "LIVE0001"
        await rig.send(header=sid)  # adopted
    await rig.send(header=sid, headers=forged)
    assert "X-Session-New" not in bot.last.headers
    assert "X-Session-Previous" not in bot.last.headers
    if issuer == "gateway":
        assert bot.last.headers.getall("X-Session-Id") == [sid]


async def test_the_bot_cannot_forge_the_gateways_response_headers(
    start_echo: StartEcho, rig_for: StartRig
) -> None:
    bot = await start_echo(
        response_headers={
            "x-session-new": "forged",  # names match case-insensitively
            "X-Session-Id": "OTHER",
            "X-Gateway-Session": "GatewayAffinity=x",
        }
    )
    rig = await rig_for(bot.url)
    # The first request adopts the id; the second continues the live session (the commonest answer's path).
    for _ in range(2):
        reply = await rig.send(header="LIVE0001")
        assert reply.headers.getall("X-Session-Id") == ["LIVE0001"]
        assert "X-Session-New" not in reply.headers
        assert len(reply.headers.getall("X-Gateway-Session")) == 1
        assert reply.headers["X-Gateway-Session"] != "GatewayAffinity=x"


# --- each new session is signalled exactly once ---------------------------------------------------------


async def test_concurrent_requests_with_the_same_expired_id_share_one_new_session(
    start_demo: StartDemo, rig_for: StartRig, clock: FakeClock
) -> None:
    demo = await start_demo(delay=0.05)
    rig = await rig_for(demo.url)
    sid = (await rig.send()).session_id
    assert sid is not None
    clock.advance(601)
    replies = await asyncio.gather(*(rig.send(header=sid) for _ in range(3)))
    new_ids = {r.session_id for r in replies}
    assert len(new_ids) == 1 and sid not in new_ids and None not in new_ids
    assert sorted(str(r.new) for r in replies) == ["None", "None", "expired"]
    assert sorted(r.turn for r in replies) == [1, 2, 3]
    assert rig.started("expired") == 1 and rig.ended("idle") == 1 and rig.active == 1
    signals = [s.headers.get("X-Session-New") for s in demo.seen]
    assert signals.count("expired") == 1


async def test_concurrent_requests_with_the_same_expired_id_gateway_issued(
    start_echo: StartEcho, rig_for: StartRig, clock: FakeClock
) -> None:
    bot = await start_echo(delay=0.05)
    rig = await rig_for(bot.url, issuer="gateway")
    sid = (await rig.send()).session_id
    assert sid is not None
    clock.advance(601)
    replies = await asyncio.gather(*(rig.send(header=sid) for _ in range(3)))
    new_ids = {r.session_id for r in replies}
    assert len(new_ids) == 1 and sid not in new_ids and None not in new_ids
    assert sorted(str(r.new) for r in replies) == ["None", "None", "expired"]
    assert rig.started("expired") == 1 and rig.active == 1
    assert [s.headers.get("X-Session-New") for s in bot.seen].count("expired") == 1


@pytest.mark.parametrize("issuer", ["upstream", "gateway"])
async def test_concurrent_requests_with_the_same_unknown_id_share_one_new_session(
    start_demo: StartDemo, start_echo: StartEcho, rig_for: StartRig, issuer: str
) -> None:
    """Upstream: the demo bot rejects the id with a new one; gateway-issued: the id is never adopted."""
    bot = await start_demo(delay=0.05) if issuer == "upstream" else await start_echo(delay=0.05)
    rig = await rig_for(bot.url, issuer=issuer)
    replies = await asyncio.gather(*(rig.send(header="NEVERSEEN0001") for _ in range(3)))
    new_ids = {r.session_id for r in replies}
    assert len(new_ids) == 1 and None not in new_ids and "NEVERSEEN0001" not in new_ids
    assert sorted(str(r.new) for r in replies) == ["None", "None", "unknown"]
    assert rig.started("unknown") == 1 and rig.active == 1
    assert sum(rig.started(r) or 0 for r in START_REASONS) == 1


async def test_concurrent_requests_with_the_same_live_id_both_continue(
    start_demo: StartDemo, rig_for: StartRig
) -> None:
    demo = await start_demo(delay=0.05)
    rig = await rig_for(demo.url)
    sid = (await rig.send()).session_id
    assert sid is not None
    replies = await asyncio.gather(rig.send(header=sid), rig.send(cookie=sid))
    assert [r.session_id for r in replies] == [sid, sid]
    assert [r.new for r in replies] == [None, None]
    assert sorted(r.turn for r in replies) == [2, 3]
    assert rig.active == 1 and rig.started("first") == 1
    # No lost update: the ended session counted all four of its requests (the end request included).
    await rig.send("/endsession", method="POST", header=sid)
    assert rig.metric("session_requests_sum") == 4
    assert rig.metric("session_requests_count") == 1


# --- bad input --------------------------------------------------------------------------------------


BAD_INPUT = [
    pytest.param({"header": "A" * 129}, "longer than 128 bytes", id="header-id-too-long"),
    pytest.param({"cookie": "A" * 129}, "longer than 128 bytes", id="cookie-id-too-long"),
    pytest.param({"path": "/;jsessionid=" + "A" * 129}, "longer than 128 bytes", id="path-id-too-long"),
    pytest.param({"path": "/?sid=" + "A" * 129}, "longer than 128 bytes", id="query-id-too-long"),
    pytest.param({"headers": {"X-Teneo-Session": "JSESSIONID=ab cd"}}, "may not carry", id="header-space"),
    pytest.param({"headers": {"X-Teneo-Session": "JSESSIONID=ab,cd"}}, "may not carry", id="header-comma"),
    pytest.param(
        {"headers": {"X-Teneo-Session": "JSESSIONID=ab\\cd"}}, "may not carry", id="header-backslash"
    ),
    pytest.param({"headers": {"X-Teneo-Session": 'JSESSIONID=ab"cd'}}, "may not carry", id="header-dquote"),
    pytest.param({"headers": {"Cookie": "JSESSIONID=ab cd"}}, "may not carry", id="cookie-space"),
    pytest.param({"headers": {"Cookie": "JSESSIONID=ab\\cd"}}, "may not carry", id="cookie-backslash"),
    pytest.param({"path": "/?sid=ab%20cd"}, "may not carry", id="query-space"),
    pytest.param({"path": "/?sid=ab%2Ccd"}, "may not carry", id="query-comma"),
    pytest.param({"headers": {"X-Teneo-Session": "garbage"}}, "not a cookie string", id="header-garbage"),
    pytest.param({"headers": {"X-Teneo-Session": "=x"}}, "not a cookie string", id="header-empty-name"),
    pytest.param(
        {"headers": {"X-Teneo-Session": "JSESSIONID=ab\tcd"}}, "control characters", id="header-htab"
    ),
    pytest.param({"headers": {"Cookie": "JSESSIONID=ab\tcd"}}, "control characters", id="cookie-htab"),
    pytest.param({"path": "/?sid=ab%01cd"}, "control characters", id="query-control"),
    pytest.param({"path": "/?sid=ab%0D%0Acd"}, "control characters", id="query-crlf"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_INPUT)
async def test_bad_session_input_is_refused(
    demo: Bot, rig_for: StartRig, kwargs: dict[str, Any], message: str
) -> None:
    rig = await rig_for(demo.url, query_param="sid")
    live = (await rig.send()).session_id
    assert live is not None
    bot_requests = len(demo.seen)
    reply = await rig.send(**kwargs)
    assert reply.status == 400
    error = reply.json["error"]
    assert error["code"] == "bad_session_header"
    assert message in error["message"]
    assert len(demo.seen) == bot_requests  # nothing forwarded
    assert "A" * 129 not in error["message"]  # the message does not echo a huge value
    continued = await rig.send(header=live)
    assert (continued.turn, continued.new, continued.session_id) == (2, None, live)
    assert rig.active == 1


async def test_an_id_of_exactly_max_id_length_is_accepted(start_echo: StartEcho, rig_for: StartRig) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url, max_id_length=32)
    assert (await rig.send(header="B" * 32)).status == 200
    assert bot.last.cookies == [("JSESSIONID", "B" * 32)]
    assert (await rig.send(header="B" * 33)).status == 400


async def test_control_characters_never_reach_the_bot(demo: Bot, rig_for: StartRig) -> None:
    """aiohttp's HTTP parser refuses \\x01 in a header before the gateway runs: 400, but not our JSON."""
    rig = await rig_for(demo.url)
    live = (await rig.send()).session_id
    assert live is not None and rig.client.port is not None
    bot_requests = len(demo.seen)
    for value in (b"JSESSIONID=ab\x01cd", b"JSESSIONID=" + live.encode() + b"\x01"):
        refused = await raw_exchange(
            rig.client.port,
            b"GET /?userinput=x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Teneo-Session: "
            + value
            + b"\r\n\r\n",
        )
        assert refused.status == 400
    assert len(demo.seen) == bot_requests
    assert (await rig.send(header=live)).turn == 2


async def test_an_empty_session_cookie_counts_as_no_session(demo: Bot, rig_for: StartRig) -> None:
    rig = await rig_for(demo.url)
    reply = await rig.send(headers={"Cookie": "JSESSIONID=; other=1"})
    assert reply.status == 200
    assert reply.new == "first" and reply.turn == 1


# --- the session cap ------------------------------------------------------------------------------------


async def _bot_for(issuer: str, start_demo: StartDemo, start_echo: StartEcho) -> Bot | HeaderEchoBot:
    return await start_demo() if issuer == "upstream" else await start_echo()


@pytest.mark.parametrize("issuer", ["upstream", "gateway"])
async def test_cap_evicts_the_least_recently_active_session(
    start_demo: StartDemo, start_echo: StartEcho, rig_for: StartRig, clock: FakeClock, issuer: str
) -> None:
    bot = await _bot_for(issuer, start_demo, start_echo)
    rig = await rig_for(bot.url, issuer=issuer, max_sessions=2, on_full="evict")
    s1 = (await rig.send()).session_id
    clock.advance(10)
    s2 = (await rig.send()).session_id
    clock.advance(10)
    assert s1 and s2
    assert (await rig.send(header=s1)).new is None  # s1 is now more recent than s2
    s3 = await rig.send()
    assert s3.status == 200 and s3.new == "first" and s3.session_id not in (None, s1, s2)
    assert rig.ended("evicted") == 1
    assert rig.active == 2
    assert rig.metric("sessions_active_max") == 2
    again = await rig.send(header=s1)
    assert again.new is None and again.session_id == s1
    evicted = await rig.send(header=s2)
    assert evicted.new == "ended" and evicted.session_id != s2
    assert rig.active == 2


@pytest.mark.xfail(
    strict=True,
    reason="contract says on_full=evict ends the least recently active session; the memory store evicts the "
    "session nearest its deadline, which differs once X-Session-Control: timeout= gave one session a shorter "
    "idle timeout (fixing it needs an LRU order in every store)",
)
async def test_cap_evicts_by_recency_even_with_a_shorter_per_session_timeout(
    demo: Bot, rig_for: StartRig, clock: FakeClock
) -> None:
    rig = await rig_for(demo.url, max_sessions=2, on_full="evict")
    old = (await rig.send()).session_id  # default 600 s idle timeout, least recently active
    clock.advance(1)
    short = (await rig.send("/?userinput=a&control=timeout%3D100")).session_id
    clock.advance(1)
    assert old and short and (await rig.send(header=short)).new is None  # the most recently active
    clock.advance(1)
    await rig.send()  # a third session: one must go
    assert rig.ended("evicted") == 1
    assert (await rig.send(header=short)).new is None
    assert (await rig.send(header=old)).new == "ended"


@pytest.mark.parametrize("issuer", ["upstream", "gateway"])
async def test_cap_rejects_new_sessions_when_full(
    start_demo: StartDemo, start_echo: StartEcho, rig_for: StartRig, issuer: str
) -> None:
    bot = await _bot_for(issuer, start_demo, start_echo)
    rig = await rig_for(bot.url, issuer=issuer, max_sessions=2, on_full="reject")
    s1 = (await rig.send()).session_id
    s2 = (await rig.send()).session_id
    assert s1 and s2
    bot_requests = len(bot.seen)
    reply = await rig.send()
    assert reply.status == 503
    assert reply.json["error"]["code"] == "session_capacity"
    assert len(bot.seen) == bot_requests
    assert rig.metric("sessions_rejected_total") == 1
    assert rig.active == 2 and rig.ended("evicted") == 0
    for sid in (s1, s2):
        continued = await rig.send(header=sid)
        assert continued.status == 200 and continued.session_id == sid and continued.new is None


@pytest.mark.parametrize("issuer", ["upstream", "gateway"])
async def test_cap_reject_of_a_presented_id_can_be_retried(
    start_demo: StartDemo, start_echo: StartEcho, rig_for: StartRig, issuer: str
) -> None:
    """A refused request that presented an id must not leave racing requests for that id waiting forever."""
    bot = await _bot_for(issuer, start_demo, start_echo)
    rig = await rig_for(bot.url, issuer=issuer, max_sessions=2, on_full="reject")
    s1 = (await rig.send()).session_id
    s2 = (await rig.send()).session_id
    assert s1 and s2
    for _ in range(2):
        reply = await asyncio.wait_for(rig.send(header="UNKNOWN0001"), 3)
        assert reply.status == 503
    assert rig.metric("sessions_rejected_total") == 2
    await rig.send("/endsession", method="POST", header=s1)  # room again
    reply = await asyncio.wait_for(rig.send(header="UNKNOWN0001"), 3)
    assert reply.status == 200


# --- metrics --------------------------------------------------------------------------------------------


async def test_every_session_label_starts_at_zero(demo: Bot, rig_for: StartRig) -> None:
    rig = await rig_for(demo.url)
    assert rig.counts("sessions_started_total", START_REASONS, "reason") == dict.fromkeys(START_REASONS, 0.0)
    assert rig.counts("sessions_ended_total", END_REASONS, "reason") == dict.fromkeys(END_REASONS, 0.0)
    assert rig.counts("session_carrier_total", CARRIERS, "carrier") == dict.fromkeys(CARRIERS, 0.0)
    assert rig.metric("sessions_rejected_total") == 0
    assert rig.active == 0 and rig.metric("sessions_active_max") == 0
    for histogram in ("session_duration_seconds", "session_requests", "session_idle_gap_seconds"):
        assert rig.metric(f"{histogram}_count") == 0


async def test_exact_metrics_after_a_scripted_scenario(
    demo: Bot, rig_for: StartRig, clock: FakeClock, aiohttp_client: Any
) -> None:
    rig = await rig_for(demo.url, sweep_interval=0.05)
    a = (await rig.send()).session_id  # first (carrier none)
    clock.advance(10)
    assert a and (await rig.send(cookie=a)).turn == 2  # gap 10 s (cookie)
    b = (await rig.send()).session_id  # first (none)
    clock.advance(5)
    assert b and (await rig.send(header=b)).turn == 2  # gap 5 s (header)
    clock.advance(20)
    end = await rig.send(f"/endsession;jsessionid={a}", method="POST")  # client end, gap 35 s for a (path)
    assert end.json == LOGOUT
    assert rig.active == 1
    clock.advance(601)
    await eventually(lambda: rig.active == 0)  # b expires by the sweeper
    restarted = await rig.send(header=b)  # expired (header)
    assert restarted.new == "expired"
    c = restarted.session_id

    assert rig.counts("sessions_started_total", START_REASONS, "reason") == {
        **dict.fromkeys(START_REASONS, 0.0),
        "first": 2.0,
        "expired": 1.0,
    }
    assert rig.counts("sessions_ended_total", END_REASONS, "reason") == {
        **dict.fromkeys(END_REASONS, 0.0),
        "client": 1.0,
        "idle": 1.0,
    }
    assert rig.counts("session_carrier_total", CARRIERS, "carrier") == {
        "cookie": 1.0,
        "header": 2.0,
        "path": 1.0,
        "query": 0.0,
        "body": 0.0,
        "none": 2.0,
    }
    assert rig.active == 1
    assert rig.metric("sessions_active_max") == 2
    assert rig.metric("sessions_rejected_total") == 0
    # a ended after 3 requests (first, cookie, end), b after 2.
    assert rig.metric("session_requests_count") == 2
    assert rig.metric("session_requests_sum") == 5
    assert rig.metric("session_duration_seconds_count") == 2
    assert rig.metric("session_duration_seconds_sum") == 35 + 626  # a: 10+5+20; b: 5+20+601
    # Gaps between consecutive requests of one session: a 10 and 25, b 5.
    assert rig.metric("session_idle_gap_seconds_count") == 3
    assert rig.metric("session_idle_gap_seconds_sum") == 10 + 25 + 5

    admin = await aiohttp_client(admin_app_for(rig.app))
    async with admin.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert f'{P}sessions_started_total{{reason="adopted"}} 0.0' in text
    assert f'{P}session_carrier_total{{carrier="query"}} 0.0' in text
    assert f"{P}sessions_active 1.0" in text
    for sid in (a, b, c):
        assert sid and sid not in text
    assert not re.search(r"[0-9A-F]{32}", text)  # no demo-bot session id of any kind


# --- cookie attributes, the bot deleting its cookie, batched sweeps, WebSocket query carriage ----------


async def test_cookie_attributes_for_cross_site_widgets(demo: Bot, rig_for: StartRig) -> None:
    rig = await rig_for(
        demo.url,
        cookie_samesite="None",
        cookie_secure=True,
        cookie_partitioned=True,
        rewrite_upstream_cookies=True,
    )
    reply = await rig.send()
    for name in ("JSESSIONID", "GatewayAffinity"):
        cookie = reply.set_cookie(name)
        assert cookie is not None, name
        attrs = [a.strip() for a in cookie.split(";")[1:]]
        assert "SameSite=None" in attrs and "Secure" in attrs and "Partitioned" in attrs, cookie
        assert sum(a.lower().startswith("samesite") for a in attrs) == 1, cookie
    bot_cookie = reply.set_cookie("JSESSIONID")
    assert bot_cookie is not None and "Path=/" in bot_cookie and "HttpOnly" in bot_cookie  # the rest is kept


async def test_bot_cookies_pass_through_untouched_by_default(demo: Bot, rig_for: StartRig) -> None:
    rig = await rig_for(demo.url)
    reply = await rig.send()
    bot_cookie = reply.set_cookie("JSESSIONID")
    assert bot_cookie == f"JSESSIONID={reply.session_id}; Path=/; HttpOnly"


async def test_bot_deleting_its_session_cookie_ends_the_session(
    start_echo: StartEcho, rig_for: StartRig
) -> None:
    bot = await start_echo()
    rig = await rig_for(bot.url)
    assert (await rig.send(header="LIVE0001")).session_id == "LIVE0001"  # adopted
    bot.response_headers = {"Set-Cookie": "JSESSIONID=; Path=/; Max-Age=0"}
    reply = await rig.send(header="LIVE0001")
    assert reply.status == 200
    assert rig.ended("bot") == 1 and rig.active == 0
    assert reply.set_cookie("JSESSIONID") == "JSESSIONID=; Path=/; Max-Age=0"  # passed on to the client
    bot.response_headers = {}
    await rig.send(header="LIVE0001")
    assert bot.last.headers.getall("X-Session-New") == ["ended"]


async def test_the_sweeper_works_in_batches(demo: Bot, rig_for: StartRig, clock: FakeClock) -> None:
    rig = await rig_for(demo.url, sweep_interval=0.05, sweep_batch=7)
    for _ in range(40):
        assert (await rig.send()).status == 200
    assert rig.active == 40
    clock.advance(601)
    await eventually(lambda: rig.active == 0)
    assert rig.ended("idle") == 40


async def test_websocket_carries_the_session_in_the_query(aiohttp_server: Any, rig_for: StartRig) -> None:
    seen: list[tuple[str, str | None]] = []

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        seen.append((request.raw_path, request.headers.get("Cookie")))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(f"echo {msg.data}")
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    server = await aiohttp_server(app)
    rig = await rig_for(f"http://127.0.0.1:{server.port}", query_param="sid")
    async with rig.client.ws_connect("/ws?sid=WSID0001") as ws:
        await ws.send_str("hi")
        assert (await asyncio.wait_for(ws.receive_str(), 5)) == "echo hi"
    assert seen == [("/ws", "JSESSIONID=WSID0001")]
    assert rig.metric("session_carrier_total", carrier="query") == 1
    assert rig.started("adopted") == 1


# --- what the session layer remembers stays small ------------------------------------------------------


async def test_large_cookies_are_not_remembered_whatever_clients_send() -> None:
    """The session layer caches the Cookie field it sends the bot, per session; a client sending a new large
    cookie with every request must not fill it (2,000 requests of 8 kB each kept 33 MB before)."""
    config = load_config(None, environ={"GATEWAY_UPSTREAM_URL": "http://127.0.0.1:1"})
    s = dataclasses.replace(config.session, secret="test-secret")
    store = MemoryStore(
        absolute_timeout=s.absolute_timeout,
        max_sessions=s.max_sessions,
        on_full=s.on_full,
        tombstone_ttl=s.tombstone_ttl,
        max_tombstones=s.max_tombstones,
    )
    metrics = Metrics(CollectorRegistry())
    manager = SessionManager(s, store, metrics, Upstreams(config.upstream, metrics))
    big = "x" * 8000  # a JWT-sized cookie; listen.max_field_size allows 16,384 bytes a field
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):  # no session: a first request each, with its own cookies
        headers = CIMultiDictProxy(CIMultiDict([("Host", "gw"), ("Cookie", f"jwt={i:06d}{big}")]))
        turn = await manager.prepare("/chat", headers)
        assert turn.headers[0] == ("Cookie", f"jwt={i:06d}{big}")
        await manager.abandon(turn)
    retained = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert retained < 4_000_000, f"{retained / 1e6:.1f} MB retained after 2,000 requests"
