"""Bot replicas behind `upstream.urls` (issue 5): placement, pinning, signed affinity, passive health."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from redis_server import RedisServer
from replica_helpers import BotReplica, StartBots, StartNode, affinity_of, gateway_config, total
from session_helpers import Reply, Rig

from gateway.app import SESSIONS
from gateway.sessions.affinity import AffinitySigner


async def exchange(node: Rig, bots: list[BotReplica], *args: Any, **kwargs: Any) -> tuple[Reply, list[str]]:
    """One request; the names of the bots that saw it."""
    before = [len(b.seen) for b in bots]
    reply = await node.send(*args, **kwargs)
    return reply, [b.name for b, n in zip(bots, before, strict=True) if len(b.seen) > n]


def carrying_affinity(sid: str, affinity: str) -> dict[str, str]:
    """Both values the way Teneo Web Chat sends them back: one X-Teneo-Session cookie string."""
    return {"X-Teneo-Session": f"JSESSIONID={sid}; GatewayAffinity={affinity}"}


async def test_new_sessions_arriving_one_by_one_spread_evenly(
    start_bots: StartBots, start_node: StartNode
) -> None:
    bots = await start_bots(3)
    node = await start_node(gateway_config([b.spec for b in bots]))
    placed = [(await exchange(node, bots))[1] for _ in range(9)]
    assert placed == [["b1"], ["b2"], ["b3"]] * 3  # ties broken round-robin
    for bot in bots:
        assert node.metric("upstream_sessions_pinned_total", replica=bot.name) == 3
        assert node.metric("upstream_requests_total", replica=bot.name) == 3
        assert node.metric("upstream_up", replica=bot.name) == 1
        assert [s.headers.get("X-Session-New") for s in bot.seen] == ["first"] * 3


async def test_new_sessions_go_to_the_least_busy_replica(
    start_bots: StartBots, start_node: StartNode
) -> None:
    bots = await start_bots(3, delays={"b1": 0.5})
    node = await start_node(gateway_config([b.spec for b in bots]))
    slow = asyncio.create_task(exchange(node, bots))  # b1, by round-robin; in flight for 0.5 s
    for _ in range(50):
        if bots[0].seen:
            break
        await asyncio.sleep(0.01)
    placed = [(await exchange(node, bots))[1] for _ in range(4)]
    assert ["b1"] not in placed and {"b2", "b3"} == {name for (name,) in placed}  # b1 is busy: avoided
    assert (await slow)[0].status == 200 and len(bots[0].seen) == 1


async def test_a_session_stays_pinned_to_its_replica(start_bots: StartBots, start_node: StartNode) -> None:
    bots = await start_bots(3)
    node = await start_node(gateway_config([b.spec for b in bots]))
    home: dict[str, str] = {}
    for _ in range(6):
        reply, (bot,) = await exchange(node, bots)
        assert reply.session_id
        home[reply.session_id] = bot
    for turn in (2, 3, 4):
        for sid, bot in home.items():
            reply, hit = await exchange(node, bots, header=sid)
            assert (hit, reply.session_id, reply.new, reply.turn) == ([bot], sid, None, turn)
    for bot in bots:
        assert bot.session_ids() == {sid for sid, b in home.items() if b == bot.name}
        assert node.metric("upstream_requests_total", replica=bot.name) == 8


async def test_affinity_survives_a_restart_of_a_memory_store_gateway(
    start_bots: StartBots, start_node: StartNode
) -> None:
    bots = await start_bots(3)
    config = gateway_config([b.spec for b in bots])
    assert config.session.store == "memory"
    before = await start_node(config)
    sessions = []
    for _ in range(3):
        reply, (bot,) = await exchange(before, bots)
        assert reply.session_id
        sessions.append((reply.session_id, affinity_of(reply.headers), bot))
    assert [bot for *_, bot in sessions] == ["b1", "b2", "b3"]
    after = await start_node(config)  # a new process: no session in its store, the same secret
    # In reverse order, so that round-robin alone would send b3's session to b1.
    for sid, affinity, bot in reversed(sessions):
        reply, hit = await exchange(after, bots, headers=carrying_affinity(sid, affinity))
        assert (hit, reply.status, reply.session_id, reply.new, reply.turn) == ([bot], 200, sid, None, 2)
    assert after.metric("sessions_started_total", reason="adopted") == 3
    assert after.metric("sessions_started_total", reason="unknown") == 0
    # Adopted sessions are pinned in the new store: the affinity value is not needed any more.
    for sid, _, bot in sessions:
        reply, hit = await exchange(after, bots, header=sid)
        assert (hit, reply.turn) == ([bot], 3)


async def test_a_tampered_affinity_value_is_not_trusted(start_bots: StartBots, start_node: StartNode) -> None:
    bots = await start_bots(3)
    config = gateway_config([b.spec for b in bots])
    before = await start_node(config)
    replies = [await before.send() for _ in range(3)]
    (s1, _), (s2, a2), (s3, a3) = [(r.session_id or "", affinity_of(r.headers)) for r in replies]
    assert a3.startswith("b3.")
    after = await start_node(config)
    b3_seen = len(bots[2].seen)
    # b3's valid value copied onto s1: it is bound to s3, so it does not verify; placement chooses b1.
    reply, hit = await exchange(after, bots, headers=carrying_affinity(s1, a3))
    assert (hit, reply.session_id, reply.turn) == (["b1"], s1, 2)
    # s2's value with its replica name edited to b3: the signature fails; placement chooses b2.
    reply, hit = await exchange(after, bots, headers=carrying_affinity(s2, "b3." + a2.partition(".")[2]))
    assert (hit, reply.session_id, reply.turn) == (["b2"], s2, 2)
    # A value for s3 naming b1, signed with another deployment's secret: placement chooses b3, s3's home.
    foreign = AffinitySigner("another-secret").sign("b1", s3)
    reply, hit = await exchange(after, bots, headers=carrying_affinity(s3, foreign))
    assert (hit, reply.session_id, reply.new, reply.turn) == (["b3"], s3, None, 2)
    assert after.metric("sessions_started_total", reason="unknown") == 0
    # Control: the genuine value does steer (a fresh gateway would otherwise send s3 to b1).
    control = await start_node(config)
    reply, hit = await exchange(control, bots, headers=carrying_affinity(s3, a3))
    assert (hit, reply.turn) == (["b3"], 3)
    assert len(bots[2].seen) - b3_seen == 2


async def test_adding_a_replica_under_load_moves_no_session(
    redis: RedisServer, start_bots: StartBots, start_node: StartNode
) -> None:
    """Ten conversations keep talking while a gateway with a third bot replica joins; none moves."""
    bots = await start_bots(3)
    two = await start_node(gateway_config([b.spec for b in bots[:2]], redis))
    home: dict[str, str] = {}
    for _ in range(10):
        reply, (bot,) = await exchange(two, bots)
        assert reply.session_id
        home[reply.session_id] = bot
    assert sorted(home.values()) == ["b1"] * 5 + ["b2"] * 5
    gateways = [two]
    turns: dict[str, list[int]] = {sid: [1] for sid in home}
    news: list[str | None] = []
    stop = asyncio.Event()

    async def talk(sid: str) -> None:
        for i in itertools.count():
            if stop.is_set() and i >= 6:
                return
            reply = await gateways[i % len(gateways)].send(header=sid)
            assert reply.status == 200 and reply.session_id == sid, (reply.status, reply.body[:200])
            news.append(reply.new)
            turns[sid].append(reply.turn)

    load = [asyncio.create_task(talk(sid)) for sid in home]
    await asyncio.sleep(0.1)
    three = await start_node(gateway_config([b.spec for b in bots], redis))  # joins while the load runs
    gateways.append(three)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*load), 10)
    assert set(news) == {None}
    for sid, seen in turns.items():
        assert seen == list(range(1, len(seen) + 1)), sid  # every turn continued, none lost
    assert three.metric("upstream_requests_total", replica="b1") > 0  # the new gateway carried load
    for bot in bots:
        assert bot.session_ids() <= {sid for sid, b in home.items() if b == bot.name}
    assert bots[2].seen == []
    # New sessions reach the new replica.
    placed = [(await exchange(three, bots))[1] for _ in range(3)]
    assert sorted(placed) == [["b1"], ["b2"], ["b3"]]


async def test_a_killed_bot_replica_moves_its_session_with_a_signal(
    start_bots: StartBots, start_node: StartNode
) -> None:
    bots = await start_bots(3)
    node = await start_node(gateway_config([b.spec for b in bots]))
    first, (home,) = await exchange(node, bots)
    sid = first.session_id
    assert home == "b1" and sid and (await exchange(node, bots, header=sid))[0].turn == 2
    await bots[0].server.close()  # b1 dies with the conversation's state
    reply, hit = await exchange(node, bots, header=sid)
    assert reply.status == 200 and reply.new == "upstream" and reply.turn == 1
    moved = reply.session_id
    assert moved and moved != sid and hit in (["b2"], ["b3"])
    to_bot = next(b for b in bots if b.name == hit[0]).seen[-1].headers
    assert to_bot.get("X-Session-New") == "upstream" and to_bot.get("X-Session-Previous") == sid
    assert "JSESSIONID" not in to_bot.get("Cookie", "")
    assert node.metric("upstream_up", replica="b1") == 0
    assert node.metric("upstream_replica_errors_total", replica="b1") == 1
    assert node.metric("upstream_errors_total", reason="connect") == 1
    assert node.metric("sessions_ended_total", reason="upstream") == 1
    assert node.metric("sessions_started_total", reason="upstream") == 1
    assert node.metric("upstream_sessions_pinned_total", replica=hit[0]) == 1  # the re-pin
    assert node.metric("upstream_sessions_pinned_total", replica="b1") == 1
    # The moved conversation continues where it now lives; a late request with the old id follows it.
    again, hit2 = await exchange(node, bots, header=moved)
    assert (hit2, again.session_id, again.new, again.turn) == (hit, moved, None, 2)
    late, hit3 = await exchange(node, bots, header=sid)
    assert (hit3, late.session_id, late.new, late.turn) == (hit, moved, None, 3)
    # Nothing is in flight: the re-pin moved the request's count to the replica it went to.
    assert [r.in_flight for r in node.app[SESSIONS].upstreams.replicas] == [0, 0, 0]
    # New sessions avoid the dead replica while it is down.
    placed = [(await exchange(node, bots))[1] for _ in range(4)]
    assert sorted(placed) == [["b2"], ["b2"], ["b3"], ["b3"]]
    assert node.metric("upstream_requests_total", replica="b1") == 3  # 2 answered + the refused attempt
    assert node.metric("upstream_replica_errors_total", replica="b1") == 1


async def test_strict_affinity_answers_503_when_the_replica_is_gone(
    start_bots: StartBots, start_node: StartNode
) -> None:
    bots = await start_bots(2)
    node = await start_node(gateway_config([b.spec for b in bots], upstream={"strict_affinity": True}))
    sid = (await node.send()).session_id
    assert sid
    await bots[0].server.close()
    for _ in range(2):  # the refused connect, then the replica known down
        reply, hit = await exchange(node, bots, header=sid)
        assert reply.status == 503, reply.body
        assert reply.json["error"]["code"] == "upstream_unavailable"
        assert hit == [] and reply.new is None
    assert node.metric("upstream_up", replica="b1") == 0
    assert node.metric("sessions_ended_total", reason="upstream") == 0  # the session is kept for its replica
    fresh, hit = await exchange(node, bots)
    assert fresh.status == 200 and hit == ["b2"] and fresh.new == "first"


async def test_per_replica_metrics_after_a_scripted_scenario(
    redis: RedisServer, start_bots: StartBots, start_node: StartNode
) -> None:
    """Two gateway replicas, two bot replicas: each gateway counts what it sent where."""
    bots = await start_bots(2)
    g1, g2 = [await start_node(gateway_config([b.spec for b in bots], redis)) for _ in range(2)]
    s1 = (await g1.send()).session_id  # b1
    s2 = (await g1.send()).session_id  # b2
    s3 = (await g2.send()).session_id  # b1 (g2's own round-robin)
    for sid in (s1, s2, s3):
        await g2.send(header=sid)
    await bots[1].server.close()
    moved = await g1.send(header=s2)  # b2 refused: re-pinned to b1
    assert moved.new == "upstream"
    expect = [
        (g1, {"requests": {"b1": 2, "b2": 2}, "errors": {"b1": 0, "b2": 1}, "pinned": {"b1": 2, "b2": 1}}),
        (g2, {"requests": {"b1": 3, "b2": 1}, "errors": {"b1": 0, "b2": 0}, "pinned": {"b1": 1, "b2": 0}}),
    ]
    for node, values in expect:
        got = {
            "requests": {b: node.metric("upstream_requests_total", replica=b) for b in ("b1", "b2")},
            "errors": {b: node.metric("upstream_replica_errors_total", replica=b) for b in ("b1", "b2")},
            "pinned": {b: node.metric("upstream_sessions_pinned_total", replica=b) for b in ("b1", "b2")},
        }
        assert got == values
    # Health is each replica's own, passive observation: g2 has not tried b2 since it died.
    assert (g1.metric("upstream_up", replica="b2"), g2.metric("upstream_up", replica="b2")) == (0, 1)
    assert total([g1, g2], "sessions_started_total", reason="upstream") == 1


async def test_a_gateway_issued_session_whose_replica_is_down_moves_as_one_new_session(
    start_bots: StartBots, start_node: StartNode
) -> None:
    """issuer = gateway: a live session whose replica is already known down moves once, minting one id."""
    bots = await start_bots(2)
    node = await start_node(gateway_config([b.spec for b in bots], issuer="gateway"))
    sessions = []
    for _ in range(3):  # round-robin: b1, b2, b1
        reply, (bot,) = await exchange(node, bots)
        assert reply.status == 200 and reply.new == "first" and reply.session_id
        sessions.append((reply.session_id, bot))
    (s1, h1), (s2, h2), (s3, h3) = sessions
    assert (h1, h2, h3) == ("b1", "b2", "b1")
    store = node.app[SESSIONS].store
    assert await store.count() == 3
    await bots[0].server.close()  # b1 dies with both of its conversations
    # s1: the refused connect moves it (the proxy's path) and marks b1 down.
    first, hit = await exchange(node, bots, header=s1)
    assert (first.status, first.new, hit) == (200, "upstream", ["b2"])
    assert first.session_id and first.session_id != s1
    assert node.metric("upstream_up", replica="b1") == 0
    # s3: b1 is known down before forwarding, so the decision itself moves it: one new id, not two.
    second, hit = await exchange(node, bots, header=s3)
    assert (second.status, second.new, hit) == (200, "upstream", ["b2"])
    moved = second.session_id
    assert moved and moved not in (s1, s2, s3, first.session_id)
    assert node.metric("sessions_started_total", reason="upstream") == 2  # was 3: an orphan minted too
    assert node.metric("sessions_ended_total", reason="upstream") == 2
    assert node.metric("upstream_errors_total", reason="connect") == 1  # s3 was never sent to b1
    # Live: s2 and the two moved sessions; no orphan left in the store.
    assert await store.count() == 3
    assert node.metric("sessions_active") == 3
    # The bot was told the id the client got (not an orphan's), and which conversation it replaces.
    to_bot = bots[1].seen[-1].headers
    told = [to_bot.getall(name, []) for name in ("X-Session-Id", "X-Session-Previous", "X-Session-New")]
    assert told == [[moved], [s3], ["upstream"]]  # each once: the decision's repin told the bot once
    # The moved conversation continues under its new id; a late request with the old id follows it.
    again, hit = await exchange(node, bots, header=moved)
    assert (again.status, again.session_id, again.new, hit) == (200, moved, None, ["b2"])
    late, hit = await exchange(node, bots, header=s3)
    assert (late.status, late.session_id, late.new, hit) == (200, moved, None, ["b2"])
