"""Redis outages in the middle of a conversation, under both failure policies (issue 5)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from gateway_helpers import eventually
from prometheus_client import CollectorRegistry
from redis_server import RedisSentinel, RedisServer
from replica_helpers import StartNode, gateway_config
from session_helpers import Bot, FakeClock, Rig, make_session_config

from gateway.app import admin_app_for
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import SessionManager
from gateway.sessions.store import Swept
from gateway.sessions.store.memory import MemoryStore
from gateway.upstream.upstreams import Upstreams

Admin = TestClient[Any, Any]


async def readyz(admin: Admin) -> tuple[int, str]:
    async with admin.get("/readyz") as response:
        return response.status, (await response.json())["reason"]


async def _gateway(
    start_node: StartNode, aiohttp_client: Any, demo: Bot, redis: RedisServer, clock: FakeClock, policy: str
) -> tuple[Rig, Admin]:
    config = gateway_config(demo.url, redis, redis_timeout=0.2, sweep_interval=0.05, store_failure=policy)
    node = await start_node(config, clock)
    admin: Admin = await aiohttp_client(admin_app_for(node.app))
    await eventually(lambda: _ready(admin, 200), what="/readyz 200 at start")
    return node, admin


async def _ready(admin: Admin, status: int) -> bool:
    return (await readyz(admin))[0] == status


async def _timed(send: Awaitable[Any]) -> Any:
    started = time.monotonic()
    reply = await send
    assert time.monotonic() - started < 1.5, "an outage must not stall requests beyond the store timeout"
    return reply


async def test_redis_restart_under_store_failure_open(
    own_redis: RedisServer, demo: Bot, start_node: StartNode, aiohttp_client: Any, clock: FakeClock
) -> None:
    node, admin = await _gateway(start_node, aiohttp_client, demo, own_redis, clock, "open")
    sid = (await node.send()).session_id
    assert sid and (await node.send(header=sid)).turn == 2
    seen = len(demo.seen)
    own_redis.stop()
    for turn in (3, 4, 5):  # the conversation goes on, untracked, and nobody is told anything false
        reply = await _timed(node.send(header=sid))
        assert (reply.status, reply.session_id, reply.new, reply.turn) == (200, sid, None, turn)
    fresh = await _timed(node.send())  # a new conversation: answered, the bot's id passed on
    assert fresh.status == 200 and fresh.turn == 1 and fresh.session_id not in (None, sid)
    # The bot hears `first` (true, and known before forwarding); the continued turns hear nothing.
    assert [s.headers.get("X-Session-New") for s in demo.seen[seen:]] == [None, None, None, "first"]
    assert node.metric("store_up") == 0
    # Three reads before forwarding failed, and the new session's record after the bot answered.
    assert node.metric("store_errors_total", op="request") == 3
    assert node.metric("store_errors_total", op="response") == 1
    await eventually(
        lambda: (node.metric("store_errors_total", op="sweep") or 0) >= 1, what="the sweeper's errors"
    )
    assert await readyz(admin) == (200, "ok")  # open: the gateway still serves
    assert node.metric("sessions_started_total", reason="first") == 1  # only the one Redis saw

    own_redis.start()  # the same port, an empty keyspace
    await eventually(lambda: node.metric("store_up") == 1, what="store_up back to 1 without a request")
    errors = node.metric("store_errors_total", op="request")
    reply = await node.send(header=sid)  # unknown to the new Redis, accepted by the bot: adopted
    assert (reply.status, reply.session_id, reply.new, reply.turn) == (200, sid, None, 6)
    assert node.metric("sessions_started_total", reason="adopted") == 1
    assert node.metric("store_errors_total", op="request") == errors
    # Tracked again: the session lives in Redis, counts, and ends with a signal.
    await eventually(lambda: node.active == 1, what="sessions_active counts the adopted session")
    await node.send("/endsession", method="POST", header=sid)
    after = await node.send(header=sid)
    assert after.new == "ended" and after.session_id != sid
    assert node.metric("sessions_ended_total", reason="client") == 1


async def test_redis_restart_under_store_failure_closed(
    own_redis: RedisServer, demo: Bot, start_node: StartNode, aiohttp_client: Any, clock: FakeClock
) -> None:
    node, admin = await _gateway(start_node, aiohttp_client, demo, own_redis, clock, "closed")
    sid = (await node.send()).session_id
    assert sid and (await node.send(header=sid)).turn == 2
    seen = len(demo.seen)
    own_redis.stop()
    for kwargs in ({"header": sid}, {}):
        reply = await _timed(node.send(**kwargs))
        assert reply.status == 503 and reply.json["error"]["code"] == "store_unavailable"
        assert "X-Session-New" not in reply.headers
    assert len(demo.seen) == seen  # nothing reached the bot
    # The first request found Redis down; the new conversation was refused without asking it again.
    assert node.metric("store_up") == 0 and node.metric("store_errors_total", op="request") == 1
    status, reason = await readyz(admin)
    assert status == 503 and "session store" in reason

    own_redis.start()
    await eventually(lambda: _ready(admin, 200), what="/readyz 200 again after Redis restarted")
    assert node.metric("store_up") == 1
    reply = await node.send(header=sid)
    assert (reply.status, reply.session_id, reply.new, reply.turn) == (200, sid, None, 3)
    assert node.metric("sessions_started_total", reason="adopted") == 1


async def test_a_quick_redis_restart_between_requests_fails_none(
    own_redis: RedisServer, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    """Redis restarts while no request is in flight (a rolling upgrade): the pooled connections it closed are
    replaced when checked out, so even under store_failure = closed no request is refused. (redis-py 8.1 with
    maintenance notifications on handed them out: each failed one batch with 503 store_unavailable.)"""
    # No sweeps in between: they would meet (and replace) the closed connections first.
    config = gateway_config(demo.url, own_redis, redis_timeout=0.2, sweep_interval=60, store_failure="closed")
    node = await start_node(config, clock)
    sid = (await node.send()).session_id
    for reply in await asyncio.gather(*(node.send(header=sid) for _ in range(8))):
        assert reply.status == 200
    own_redis.stop()
    own_redis.start()
    await asyncio.sleep(0.2)  # the loop sees the old connections closed
    replies = [await node.send(header=sid)]  # adopted by the empty keyspace
    replies += await asyncio.gather(*(node.send(header=sid) for _ in range(8)))
    assert [r.status for r in replies] == [200] * 9
    assert (replies[0].session_id, replies[0].new) == (sid, None)
    assert node.metric("store_errors_total", op="request") in (None, 0)


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_a_frozen_redis_costs_at_most_the_store_timeout(
    own_redis: RedisServer,
    demo: Bot,
    start_node: StartNode,
    aiohttp_client: Any,
    clock: FakeClock,
    policy: str,
) -> None:
    """SIGSTOP: connections stay open and nothing answers, so only the timeout (0.2 s) protects requests."""
    node, _ = await _gateway(start_node, aiohttp_client, demo, own_redis, clock, policy)
    sid = (await node.send()).session_id
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        replies = await _timed(asyncio.gather(*(node.send(header=sid) for _ in range(5))))
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    if policy == "open":
        assert {(r.status, r.session_id, r.new) for r in replies} == {(200, sid, None)}
    else:
        assert {(r.status, r.json["error"]["code"]) for r in replies} == {(503, "store_unavailable")}
    assert node.metric("store_errors_total", op="request") == 5
    await eventually(lambda: node.metric("store_up") == 1, what="recovery after SIGCONT")
    reply = await node.send(header=sid)
    assert reply.status == 200 and reply.session_id == sid and reply.new is None
    assert node.metric("sessions_started_total", reason="adopted") == 0  # the record survived the freeze


async def test_shutdown_ends_the_sweeper_even_when_its_cancel_is_lost(demo: Bot) -> None:
    """redis-py sends through asyncio.wait_for, which on Python 3.11 can swallow a cancel (bpo-42130)."""
    inside = asyncio.Event()

    class SwallowingStore(MemoryStore):
        async def expire_due(self, now: float, limit: int) -> Swept:
            inside.set()
            with contextlib.suppress(asyncio.CancelledError):  # as wait_for does when the cancel lands late
                await asyncio.sleep(0.01)
            return await super().expire_due(now, limit)

    config = make_session_config(demo.url, session={"sweep_interval": 0.001})
    s = config.session
    store = SwallowingStore(
        absolute_timeout=s.absolute_timeout,
        max_sessions=10,
        on_full="evict",
        tombstone_ttl=s.tombstone_ttl,
        max_tombstones=10,
    )
    metrics = Metrics(CollectorRegistry())
    manager = SessionManager(s, store, metrics, Upstreams(config.upstream, metrics))
    manager.start()
    await asyncio.wait_for(inside.wait(), 5)
    stopping = asyncio.create_task(manager.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    for _ in range(500):  # on failure, cancel until one lands outside expire_due, so teardown ends
        if stopping.done():
            break
        stopping.cancel()
        await asyncio.sleep(0.002)
    assert done, "stop() did not return: the sweeper outlived its cancel"


async def test_a_sentinel_failover_keeps_the_conversation(
    demo: Bot, start_node: StartNode, aiohttp_client: Any
) -> None:
    """With session.redis_sentinels the gateway finds the master through Sentinel and follows a failover."""
    primary, replica = RedisServer(), RedisServer()
    primary.start()
    replica.start("--replicaof", "127.0.0.1", str(primary.port))
    sentinel = RedisSentinel(primary)
    sentinel.start()
    try:
        config = gateway_config(
            demo.url,
            primary,
            redis_url="redis://127.0.0.1:1/0",  # never dialled: with sentinels it gives only password and db
            redis_sentinels=(sentinel.address,),
            redis_sentinel_master="mymaster",
        )
        node = await start_node(config)
        first = await node.send()
        sid = first.session_id
        assert sid and first.turn == 1
        assert (await node.send(header=sid)).turn == 2
        await eventually(lambda: _replicated(replica), what="the replica to catch up")
        assert b"+OK" in sentinel.command("SENTINEL FAILOVER mymaster")
        await eventually(
            lambda: sentinel.master_port() == replica.port, timeout=15, what="the replica promoted"
        )
        primary.stop()  # the old master is gone for good: only the promoted replica can answer now
        reply = await node.send(header=sid)
        assert reply.status == 200 and reply.turn == 3 and reply.new is None
        assert node.metric("sessions_started_total", reason="first") == 1
    finally:
        sentinel.stop()
        replica.stop()
        primary.stop()


async def _replicated(replica: RedisServer) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=replica.port)
    try:
        return bool(await client.keys("sg:*"))
    finally:
        await client.aclose()
