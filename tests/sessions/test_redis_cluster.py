"""The Redis store on a real Redis Cluster (three masters, three replicas; issue 20). The store contract suite
runs on it too (test_store.py, "redis-cluster"); these are what only a Cluster has: sessions spread over
several masters, pipelines per node, a rename between two shards, the cap per shard, a master failover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from gateway_helpers import eventually
from redis_server import RedisClusterNodes, running_cluster
from replica_helpers import StartNode, gateway_config, total
from session_helpers import Bot, FakeClock, Rig

from gateway.app import SESSIONS
from gateway.errors import StoreUnavailable
from gateway.sessions.store import CapacityExceeded, Outcome
from gateway.sessions.store.redis import RedisStore
from gateway.sessions.store.redis_deferred import RedisDeferred
from gateway.upstream.deferred import Answer

IDLE = 600.0
ABSOLUTE = 3600.0

MakeStore = Callable[..., RedisStore]


@pytest.fixture
async def make_store(redis_cluster: RedisClusterNodes) -> AsyncIterator[MakeStore]:
    """make_store(**options) -> a RedisStore on the (flushed) Cluster, 16 shards unless told; closed after."""
    made: list[RedisStore] = []

    def make(**overrides: Any) -> RedisStore:
        options: dict[str, Any] = {
            "absolute_timeout": ABSOLUTE,
            "max_sessions": 1000,
            "on_full": "evict",
            "tombstone_ttl": 7200.0,
            "cluster": True,
            **overrides,
        }
        store = RedisStore(redis_cluster.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def _record_key(store: RedisStore, session_id: str) -> str:
    return store._keys(session_id)[1][0]


async def test_sessions_spread_over_every_master_and_are_touched_counted_and_swept_per_node(
    make_store: MakeStore, redis_cluster: RedisClusterNodes
) -> None:
    store = make_store()
    ids = [f"s{i}" for i in range(60)]
    await asyncio.gather(*(store.create(sid, 0.0, idle_timeout=IDLE, replica="r") for sid in ids))
    owners = {redis_cluster.owner(_record_key(store, sid)).port for sid in ids}
    assert len(owners) == 3  # 16 shards' hash tags land on all three masters
    # One batch of touches spans the three nodes: each call gets its own answer.
    touches = await asyncio.gather(*(store.touch(sid, 10.0) for sid in ids))
    assert [t.session.requests if t.session else None for t in touches] == [2] * 60
    assert await store.count() == 60
    await store.touch("s0", 300.0)  # its deadline moves to 900
    ended = 0
    while True:
        swept = await store.expire_due(IDLE + 11, limit=32)
        ended += len(swept.ended)
        if not swept.more:
            break
    assert ended == 59 and await store.count() == 1
    assert (await store.touch("s0", IDLE + 12)).outcome is Outcome.LIVE
    assert (await store.touch("s1", IDLE + 12)).ended_reason == "idle"


def _ids_on_two_masters(store: RedisStore, cluster: RedisClusterNodes) -> tuple[str, str]:
    first = "rename-old"
    owner = cluster.owner(_record_key(store, first))
    second = next(
        f"rename-new-{i}"
        for i in range(100)
        if cluster.owner(_record_key(store, f"rename-new-{i}")) is not owner
    )
    return first, second


async def test_a_rename_between_two_masters_moves_the_session(
    make_store: MakeStore, redis_cluster: RedisClusterNodes
) -> None:
    store = make_store()
    old, new = _ids_on_two_masters(store, redis_cluster)
    await store.create(old, 100.0, idle_timeout=IDLE, replica="r2")
    await store.touch(old, 150.0)
    renamed = await store.rename(old, new, 160.0)
    assert renamed is not None
    assert (renamed.id, renamed.created, renamed.last_seen, renamed.requests, renamed.replica) == (
        new,
        100.0,
        150.0,
        2,
        "r2",
    )
    touch = await store.touch(old, 170.0)
    assert (touch.outcome, touch.ended_reason, touch.successor) == (Outcome.ENDED, "renamed", new)
    assert (await store.touch(new, 170.0)).outcome is Outcome.LIVE
    assert await store.count() == 1
    swept = await store.expire_due(170.0 + IDLE, 100)  # the deadline moved with it
    assert [(e.reason, e.session.requests) for e in swept.ended] == [("idle", 3)]
    # Refused: a dead old id, or a live new one; the old one then keeps its session.
    assert await store.rename("nobody", new, 1.0) is None
    await store.create(old, 0.0, idle_timeout=IDLE, replica="r")
    await store.create(new, 0.0, idle_timeout=IDLE, replica="r")
    assert await store.rename(old, new, 1.0) is None
    assert (await store.touch(old, 2.0)).outcome is Outcome.LIVE


async def test_a_rename_between_two_masters_keeps_the_requests_that_came_in_under_the_old_id_meanwhile(
    make_store: MakeStore, redis_cluster: RedisClusterNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    old, new = _ids_on_two_masters(store, redis_cluster)
    await store.create(old, 100.0, idle_timeout=IDLE, replica="r")
    copy = store._rename_to

    async def a_request_meanwhile(**kwargs: Any) -> Any:
        copied = await copy(**kwargs)
        await store.touch(old, 155.0)  # another tab, while the new record exists and the old one too
        return copied

    monkeypatch.setattr(store, "_rename_to", a_request_meanwhile)
    renamed = await store.rename(old, new, 160.0)
    assert renamed is not None and (renamed.requests, renamed.last_seen) == (2, 155.0)
    touch = await store.touch(new, 170.0)
    assert touch.session is not None and touch.session.requests == 3


async def test_a_rename_between_two_masters_of_a_session_that_ends_meanwhile_leaves_no_copy(
    make_store: MakeStore, redis_cluster: RedisClusterNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    old, new = _ids_on_two_masters(store, redis_cluster)
    await store.create(old, 100.0, idle_timeout=IDLE, replica="r")
    copy = store._rename_to

    async def ended_meanwhile(**kwargs: Any) -> Any:
        copied = await copy(**kwargs)
        await store.end(old, 155.0, "client")  # e.g. an endsession through another replica
        return copied

    monkeypatch.setattr(store, "_rename_to", ended_meanwhile)
    assert await store.rename(old, new, 160.0) is None
    assert (await store.touch(new, 170.0)).outcome is Outcome.MISSING
    assert (await store.touch(old, 170.0)).ended_reason == "client"
    assert await store.count() == 0


async def test_the_cap_is_kept_per_shard(make_store: MakeStore, redis_cluster: RedisClusterNodes) -> None:
    """max_sessions = 32 over 16 shards: 2 sessions a shard. A third in one shard is refused (or evicts that
    shard's session nearest its deadline) however few the others hold: README "Redis Cluster"."""
    store = make_store(max_sessions=32, on_full="reject")
    shard = store._keys("a0")[1][2]
    same = [sid for sid in (f"a{i}" for i in range(200)) if store._keys(sid)[1][2] == shard][:3]
    await store.create(same[0], 1.0, idle_timeout=IDLE, replica="r")
    await store.create(same[1], 2.0, idle_timeout=IDLE, replica="r")
    with pytest.raises(CapacityExceeded):
        await store.create(same[2], 3.0, idle_timeout=IDLE, replica="r")
    assert await store.count() == 2
    evicting = make_store(max_sessions=32, on_full="evict")
    created = await evicting.create(same[2], 3.0, idle_timeout=IDLE, replica="r")
    assert created.evicted is not None and created.evicted.created == 1.0
    assert (await store.touch(same[0], 4.0)).ended_reason == "evicted"


async def test_scripts_a_node_lost_are_loaded_again_per_node(
    make_store: MakeStore, redis_cluster: RedisClusterNodes
) -> None:
    """A promoted replica never had the scripts (Redis 7 does not replicate the script cache), nor has a
    restarted master: every pipeline loads them on the node that answers NOSCRIPT and runs its calls again."""
    store = make_store()
    ids = [f"n{i}" for i in range(30)]
    await asyncio.gather(*(store.create(sid, 0.0, idle_timeout=IDLE, replica="r") for sid in ids))
    for node in redis_cluster.nodes:
        redis_cluster.command(node, "SCRIPT", "FLUSH")
    touches = await asyncio.gather(*(store.touch(sid, 1.0) for sid in ids))
    assert all(t.outcome is Outcome.LIVE for t in touches)
    for node in redis_cluster.nodes:
        redis_cluster.command(node, "SCRIPT", "FLUSH")
    swept = await store.expire_due(IDLE + 2, limit=100)
    assert len(swept.ended) == 30


async def test_a_stalled_master_fails_only_its_own_sessions_calls(
    make_store: MakeStore, redis_cluster: RedisClusterNodes
) -> None:
    store = make_store(timeout=0.3)
    ids = [f"p{i}" for i in range(30)]
    await asyncio.gather(*(store.create(sid, 0.0, idle_timeout=IDLE, replica="r") for sid in ids))
    stalled = redis_cluster.owner(_record_key(store, ids[0]))
    redis_cluster.command(stalled, "CLIENT", "PAUSE", "1000", "ALL")
    results = await asyncio.gather(*(store.touch(sid, 1.0) for sid in ids), return_exceptions=True)
    for sid, result in zip(ids, results, strict=True):
        if redis_cluster.owner(_record_key(store, sid)) is stalled:
            assert isinstance(result, StoreUnavailable), sid
        else:
            assert not isinstance(result, BaseException) and result.outcome is Outcome.LIVE, sid
    await asyncio.sleep(1.0)  # the pause is over
    assert (await store.touch(ids[0], 2.0)).outcome is Outcome.LIVE


async def test_deferred_answers_on_the_cluster(redis_cluster: RedisClusterNodes) -> None:
    """The deferred store's scripts each have one key, and PUBLISH reaches every node's subscribers."""
    a = RedisDeferred(redis_cluster.url, max_pending=10, prefix="t", cluster=True)
    b = RedisDeferred(redis_cluster.url, max_pending=10, prefix="t", cluster=True)
    try:
        assert await a.open("token", "session", keep=30.0)
        waiting = asyncio.create_task(a.take("token", "session", wait=5.0))
        await asyncio.sleep(0.3)  # the pick-up waits, subscribed
        await b.finish("token", Answer(200, "OK", (("Content-Type", "text/plain"),), b"late"), keep=30.0)
        answer = await asyncio.wait_for(waiting, 2.0)  # woken by the message, not the 1 s fallback
        assert isinstance(answer, Answer) and answer.body == b"late"
        assert await b.take("token", "session", wait=0.0) is None  # taken once
    finally:
        await a.close()
        await b.close()


# --- gateways on the Cluster --------------------------------------------------------------------------


def _sweeps(node: Rig) -> float:
    return node.metric("expiry_sweep_duration_seconds_count") or 0.0


def _on(cluster: RedisClusterNodes, **session: Any) -> dict[str, Any]:
    return {
        "store": "redis",
        "redis_url": cluster.url,
        "redis_cluster": True,
        "redis_timeout": 1.0,
        **session,
    }


async def test_expiry_is_counted_once_with_two_gateways_sweeping(
    redis_cluster: RedisClusterNodes, demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    config = gateway_config(demo.url, **_on(redis_cluster, idle_timeout=IDLE, sweep_interval=0.02))
    nodes = [await start_node(config, clock) for _ in range(2)]
    ids = [(await nodes[i % 2].send()).session_id for i in range(20)]
    assert all(ids) and len(set(ids)) == 20
    await eventually(lambda: all(n.active == 20 for n in nodes), what="both gateways count 20 sessions")
    clock.advance(IDLE + 1)
    await eventually(lambda: all(n.active == 0 for n in nodes), what="every session swept")
    marks = [_sweeps(n) for n in nodes]
    await eventually(
        lambda: all(_sweeps(n) >= m + 2 for n, m in zip(nodes, marks, strict=True)),
        what="two more sweeps on each gateway (a double count would have happened)",
    )
    assert total(nodes, "sessions_ended_total", reason="idle") == 20
    assert total(nodes, "session_duration_seconds_count") == 20


async def test_a_conversation_continues_across_a_master_failover(
    demo: Bot, start_node: StartNode, clock: FakeClock
) -> None:
    """`CLUSTER FAILOVER` on the replica of the master holding the session, then the old master stopped: the
    next request reaches the promoted replica (the slot map is read again) and continues the conversation."""
    with running_cluster() as cluster:  # its own: this test stops a node
        node = await start_node(gateway_config(demo.url, **_on(cluster)), clock)
        first = await node.send()
        sid = first.session_id
        assert sid and first.turn == 1
        assert (await node.send(header=sid)).turn == 2
        store = node.app[SESSIONS].store
        assert isinstance(store, RedisStore)
        master = cluster.owner(_record_key(store, sid))
        replica = cluster.replica_of(master)
        assert cluster.command(master, "WAIT", "1", "2000").strip() == "1"  # the replica has the session
        assert cluster.command(replica, "CLUSTER", "FAILOVER").strip() == "OK"
        await eventually(
            lambda: cluster.command(replica, "ROLE").startswith("master"),
            timeout=20,  # a manual failover waits for the replica to catch up: seconds on a loaded machine
            what="the replica promoted",
        )
        master.stop()  # gone for good: only the promoted replica can answer
        reply = await node.send(header=sid)
        assert (reply.status, reply.session_id, reply.new, reply.turn) == (200, sid, None, 3)
        assert node.metric("sessions_started_total", reason="first") == 1
        assert node.metric("store_errors_total", op="request") == 0
