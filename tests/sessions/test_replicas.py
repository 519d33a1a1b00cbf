"""Gateway replicas sharing one real redis-server (issue 5): a conversation, its expiry, its end and its
races are the same whichever replica a request lands on, and every count is counted once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from gateway_helpers import eventually
from redis_server import RedisServer
from replica_helpers import StartNode, gateway_config, spawn_gateways, stop_gateways, total
from session_helpers import START_REASONS, Bot, FakeClock, Rig, demo_bot_app

from gateway.app import SESSIONS

IDLE = 600.0


async def _nodes(
    start_node: StartNode, n: int, url: str, redis: RedisServer, clock: Any, **session: Any
) -> list[Rig]:
    return [await start_node(gateway_config(url, redis, **session), clock) for _ in range(n)]


def _sweeps(node: Rig) -> float:
    return node.metric("expiry_sweep_duration_seconds_count") or 0.0


async def _after_more_sweeps(nodes: list[Rig], count: int = 2) -> None:
    """Wait until every replica has swept `count` more times (so a double count would have happened)."""
    marks = [_sweeps(n) for n in nodes]
    await eventually(
        lambda: all(_sweeps(n) >= m + count for n, m in zip(nodes, marks, strict=True)),
        what="more sweeps on every replica",
    )


async def test_a_conversation_started_on_one_replica_continues_on_the_others(
    redis: RedisServer, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    nodes = await _nodes(start_node, 3, demo.url, redis, clock)
    a, b, c = nodes
    first = await a.send("/?userinput=hello")
    sid = first.session_id
    assert first.status == 200 and first.new == "first" and first.turn == 1 and sid
    for turn, node in enumerate([b, c, a, c, b], start=2):
        reply = await node.send("/?userinput=more", header=sid)
        assert (reply.status, reply.session_id, reply.new, reply.turn) == (200, sid, None, turn)
    # Replicas B and C knew the session from Redis: nothing was adopted, nothing else started.
    started = {reason: total(nodes, "sessions_started_total", reason=reason) for reason in START_REASONS}
    assert started == {**dict.fromkeys(START_REASONS, 0.0), "first": 1.0}
    assert [s.headers.get("X-Session-New") for s in demo.seen] == ["first"] + [None] * 5
    # The keyspace holds digests of ids, never an id.
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter("*")]
        assert keys and all(sid not in key for key in keys)
        for key in keys:
            if await client.type(key) == "hash":
                assert sid not in str(await client.hgetall(key))
            elif await client.type(key) == "zset":
                assert sid not in str(await client.zrange(key, 0, -1))
    finally:
        await client.aclose()


async def test_idle_sessions_expire_once_across_replicas_counted_once(
    redis: RedisServer, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    """Three sweepers race over ten due sessions, and requests race them for half of those."""
    nodes = await _nodes(start_node, 3, demo.url, redis, clock, idle_timeout=IDLE, sweep_interval=0.02)
    ids = [(await nodes[i % 3].send()).session_id for i in range(10)]
    assert all(ids) and len(set(ids)) == 10
    await eventually(lambda: all(n.active == 10 for n in nodes), what="every replica counts 10 sessions")
    clock.advance(IDLE + 1)
    late = await asyncio.gather(*(nodes[i % 3].send(header=sid) for i, sid in enumerate(ids[:5])))
    assert [r.new for r in late] == ["expired"] * 5  # by the touch or by a sweeper: the signal is the same
    assert all(r.status == 200 and r.session_id not in ids for r in late)
    await eventually(lambda: all(n.active == 5 for n in nodes), what="the five new sessions alone are active")
    await _after_more_sweeps(nodes)
    assert total(nodes, "sessions_ended_total", reason="idle") == 10
    assert total(nodes, "session_duration_seconds_count") == 10
    assert total(nodes, "sessions_started_total", reason="expired") == 5
    # A late request on any replica hears `expired` from the shared tombstone.
    again = await nodes[2].send(header=ids[7])
    assert again.new == "expired"
    assert any(s.headers.get("X-Session-Previous") == ids[7] for s in demo.seen)


async def test_endsession_on_one_replica_is_seen_by_all(
    redis: RedisServer, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    a, b, c = nodes = await _nodes(start_node, 3, demo.url, redis, clock)
    sid = (await a.send()).session_id
    assert sid and (await b.send(header=sid)).turn == 2
    end = await c.send("/endsession", method="POST", header=sid)
    assert end.status == 200 and end.json == {"status": 1, "message": "logout"}
    assert end.headers["X-Gateway-Session"] == ""
    after = await a.send(header=sid)
    assert after.new == "ended" and after.session_id not in (None, sid) and after.turn == 1
    assert demo.seen[-1].headers.get("X-Session-Previous") == sid
    # Replica B, late with the old id, continues the successor that A started: signalled once.
    late = await b.send(header=sid)
    assert (late.new, late.session_id, late.turn) == (None, after.session_id, 2)
    assert total(nodes, "sessions_ended_total", reason="client") == 1
    assert total(nodes, "sessions_started_total", reason="ended") == 1


async def test_two_replicas_racing_on_one_live_session_lose_no_request(
    redis: RedisServer, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    a, b, c = nodes = await _nodes(start_node, 3, demo.url, redis, clock)
    sid = (await a.send()).session_id
    assert sid
    replies = await asyncio.gather(*(node.send(header=sid) for _ in range(10) for node in (a, b)))
    assert {(r.status, r.session_id, r.new) for r in replies} == {(200, sid, None)}
    assert sorted(r.turn for r in replies) == list(range(2, 22))
    await c.send("/endsession", method="POST", header=sid)
    # The store counted every request of the session: 1 + 20 racing + the end request.
    assert c.metric("session_requests_sum") == 22 and c.metric("session_requests_count") == 1
    assert total(nodes, "session_idle_gap_seconds_count") == 21
    assert total(nodes, "sessions_started_total", reason="first") == 1
    assert total(nodes, "sessions_started_total", reason="adopted") == 0


async def test_the_same_expired_id_racing_on_replicas_starts_one_session(
    redis: RedisServer, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    nodes = await _nodes(
        start_node, 3, demo.url, redis, clock, idle_timeout=IDLE
    )  # no sweeper: the touch decides
    sid = (await nodes[0].send()).session_id
    seen_before = len(demo.seen)
    clock.advance(IDLE + 1)
    replies = await asyncio.gather(*(node.send(header=sid) for _ in range(3) for node in nodes))
    assert {r.status for r in replies} == {200}
    successors = {r.session_id for r in replies}
    assert len(successors) == 1 and sid not in successors and None not in successors
    assert sorted(r.new or "" for r in replies) == [""] * 8 + ["expired"]
    assert sorted(r.turn for r in replies) == list(range(1, 10))  # one bot conversation, nine turns
    to_bot = [s.headers.get("X-Session-New") for s in demo.seen[seen_before:]]
    assert to_bot.count("expired") == 1 and to_bot.count(None) == 8
    assert total(nodes, "sessions_started_total", reason="expired") == 1
    assert total(nodes, "sessions_ended_total", reason="idle") == 1


async def test_sessions_active_is_the_shared_count_on_every_replica(
    redis: RedisServer, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    a, b, c = nodes = await _nodes(start_node, 3, demo.url, redis, clock, sweep_interval=0.02)
    ids = [(await node.send()).session_id for node in (a, a, a, b, b)]
    await eventually(lambda: [n.active for n in nodes] == [5, 5, 5], what="every replica reports 5")
    await c.send("/endsession", method="POST", header=ids[0])
    await eventually(lambda: [n.active for n in nodes] == [4, 4, 4], what="every replica reports 4")
    assert [n.metric("sessions_active_max") for n in nodes] == [5, 5, 5]


async def test_gateway_processes_share_sessions_through_redis(
    redis: RedisServer, aiohttp_server: Any, tmp_path: Path
) -> None:
    """Three `python -m gateway serve` processes: turns continue, expiry is counted once, an end is seen."""
    bot = await aiohttp_server(demo_bot_app(time.monotonic, []))
    env = {
        "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{bot.port}",
        "GATEWAY_SESSION_STORE": "redis",
        "GATEWAY_SESSION_REDIS_URL": redis.url,
        "GATEWAY_SESSION_REDIS_TIMEOUT": "0.5",
        "GATEWAY_SESSION_SECRET": "shared-by-every-replica",
        "GATEWAY_SESSION_IDLE_TIMEOUT": "1.0",
        "GATEWAY_SESSION_SWEEP_INTERVAL": "0.05",
    }
    gws = await spawn_gateways(tmp_path, 3, env)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:

            async def send(
                gw: Any, sid: str | None = None, path: str = "/?userinput=hi", method: str = "GET"
            ) -> Any:
                headers = {"X-Teneo-Session": f"JSESSIONID={sid}"} if sid else {}
                async with http.request(method, gw.url + path, headers=headers) as response:
                    body = await response.json()
                    return response.status, response.headers, body

            status, headers, body = await send(gws[0])
            sid = headers["X-Session-Id"]
            assert (
                status == 200
                and headers["X-Session-New"] == "first"
                and body["output"]["parameters"]["turn"] == "1"
            )
            for turn, gw in enumerate([gws[1], gws[2], gws[0]], start=2):
                status, headers, body = await send(gw, sid)
                assert status == 200 and "X-Session-New" not in headers and headers["X-Session-Id"] == sid
                assert body["output"]["parameters"]["turn"] == str(turn)

            async def expired_everywhere() -> bool:
                active = [await gw.metric(http, "sessions_active") for gw in gws]
                idle = [await gw.metric(http, "sessions_ended_total", reason="idle") for gw in gws]
                return active == [0, 0, 0] and sum(idle) == 1

            await eventually(expired_everywhere, timeout=10, what="the idle session ended on every replica")
            await asyncio.sleep(0.3)  # six more sweeps on each replica: a second count would show now
            idle = [await gw.metric(http, "sessions_ended_total", reason="idle") for gw in gws]
            assert sorted(idle) == [0, 0, 1]
            status, headers, _ = await send(gws[1], sid)
            assert headers["X-Session-New"] == "expired"
            fresh = headers["X-Session-Id"]

            await send(gws[2], fresh, "/endsession", "POST")
            status, headers, _ = await send(gws[0], fresh)
            assert headers["X-Session-New"] == "ended"
            ended = [await gw.metric(http, "sessions_ended_total", reason="client") for gw in gws]
            assert ended == [0, 0, 1]
    finally:
        stop_gateways(gws)
    for gw in gws:
        assert gw.proc.returncode == 0, gw.stderr()
        assert "Traceback" not in gw.stderr()


async def test_a_rename_on_one_replica_is_followed_on_the_others(
    redis: RedisServer, start_node: StartNode, clock: FakeClock, aiohttp_server: Any
) -> None:
    """Tomcat-style id rotation with session.on_bot_new_id = "rename", through Redis: the old id, presented to
    another replica, continues the conversation under the new id; nothing starts or ends."""
    turns: dict[str, int] = {}

    async def bot(request: web.Request) -> web.Response:
        sid = request.cookies.get("JSESSIONID")
        issued = None
        if sid not in turns:
            sid = issued = f"S{len(turns)}"
            turns[sid] = 0
        assert sid is not None
        if request.query.get("rotate"):
            turns[sid + "R"] = turns.pop(sid)
            sid = issued = sid + "R"
        turns[sid] += 1
        response = web.json_response({"turn": turns[sid]})
        if issued:
            response.set_cookie("JSESSIONID", issued)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bot)
    server = await aiohttp_server(app)
    a, b = nodes = await _nodes(
        start_node, 2, f"http://{server.host}:{server.port}", redis, clock, on_bot_new_id="rename"
    )
    old = (await a.send()).session_id
    assert old is not None
    rotated = await a.send("/?rotate=1", header=old)
    assert (rotated.new, rotated.session_id, rotated.json["turn"]) == (None, old + "R", 2)
    late = await b.send(header=old)
    assert (late.new, late.session_id, late.json["turn"]) == (None, old + "R", 3)
    assert total(nodes, "sessions_renamed_total") == 1
    assert sum(total(nodes, "sessions_started_total", reason=r) for r in START_REASONS) == 1
    assert await a.app[SESSIONS].store.count() == 1  # one session, under its new id


async def test_endsession_for_an_id_no_replica_knows_reaches_the_bot_and_is_remembered_by_all(
    redis: RedisServer, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    a, b = nodes = await _nodes(start_node, 2, demo.url, redis, clock)
    end = await a.send("/endsession", method="POST", header="LOSTBYREDIS01")
    assert end.status == 200 and end.json == {"status": 1, "message": "logout"}
    assert ("JSESSIONID", "LOSTBYREDIS01") in demo.last.cookies
    after = await b.send(header="LOSTBYREDIS01")
    assert after.new == "ended" and after.turn == 1
    assert total(nodes, "sessions_ended_total", reason="client") == 0
