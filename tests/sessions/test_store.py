"""The SessionStore contract, run against every backend (the Redis store adds a parameter)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis_server import RedisSentinel, RedisServer

from gateway.sessions.store import CapacityExceeded, Outcome, SessionStore
from gateway.sessions.store.memory import MemoryStore
from gateway.sessions.store.redis import RedisStore, open_successor, seal_successor

IDLE = 600.0
ABSOLUTE = 3600.0

StoreFactory = Callable[..., SessionStore]


def _memory(**overrides: object) -> SessionStore:
    options: dict[str, object] = {
        "absolute_timeout": ABSOLUTE,
        "max_sessions": 1000,
        "on_full": "evict",
        "tombstone_ttl": 7200.0,
        "max_tombstones": 1000,
    }
    options.update(overrides)
    return MemoryStore(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")  # not beyond this module: it keeps watching the shared server
def redis_sentinel(redis_server: RedisServer) -> Iterator[RedisSentinel]:
    sentinel = RedisSentinel(redis_server)
    sentinel.start()
    yield sentinel
    sentinel.stop()


@pytest.fixture(params=["memory", "redis", "redis-sentinel", "redis-cluster"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    made: list[SessionStore] = []
    sentinels: tuple[str, ...] = ()
    url = ""
    if request.param in ("redis", "redis-sentinel"):
        url = request.getfixturevalue("redis").url  # flushed
    if request.param == "redis-sentinel":
        # The same contract, with the master found through a real Sentinel.
        sentinels = (request.getfixturevalue("redis_sentinel").address,)
    if request.param == "redis-cluster":
        # And on a Redis Cluster of three masters (one shard, one slot: the per-shard cap is the total).
        url = request.getfixturevalue("redis_cluster").url

    def factory(**overrides: object) -> SessionStore:
        options: dict[str, object] = {
            "absolute_timeout": ABSOLUTE,
            "max_sessions": 1000,
            "on_full": "evict",
            "tombstone_ttl": 7200.0,
        }
        if request.param == "memory":
            store: SessionStore = _memory(**overrides)
        else:
            overrides.pop("max_tombstones", None)  # Redis bounds tombstones by their TTL
            # A generous timeout: a new client's first call (the Cluster's slot map, the scripts' loading) took
            # over the default 0.5 s on a loaded CI machine; what the store does past its timeout is tested
            # where it is the point.
            options.update(
                {"shards": 1, "sentinels": sentinels, "timeout": 2.0}, **overrides
            )  # one shard: an exact cap
            options["cluster"] = request.param == "redis-cluster"
            store = RedisStore(url, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()


async def test_touch_of_unknown_id_is_missing(make_store: StoreFactory) -> None:
    store = make_store()
    assert (await store.touch("nope", 0.0)).outcome is Outcome.MISSING


async def test_create_then_touch_continues_and_counts_requests(make_store: StoreFactory) -> None:
    store = make_store()
    created = await store.create("a", 100.0, idle_timeout=IDLE, replica="r1")
    assert created.created and created.session.requests == 1 and created.active == 1
    touch = await store.touch("a", 130.0)
    assert touch.outcome is Outcome.LIVE
    assert touch.session is not None and touch.session.requests == 2 and touch.session.replica == "r1"
    assert touch.idle_gap == pytest.approx(30.0)
    assert await store.count() == 1


async def test_create_twice_continues_the_first(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    again = await store.create("a", 5.0, idle_timeout=IDLE, replica="r")
    assert not again.created and again.session.created == 0.0
    assert await store.count() == 1


async def test_idle_expiry_is_decided_by_touch(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    touch = await store.touch("a", IDLE + 1)
    assert touch.outcome is Outcome.EXPIRED and touch.session is not None and touch.session.requests == 1
    assert (await store.touch("a", IDLE + 2)).outcome is Outcome.PENDING  # the first toucher holds the claim
    await store.release("a")
    later = await store.touch("a", IDLE + 3)
    assert later.outcome is Outcome.ENDED and later.ended_reason == "idle"
    assert await store.count() == 0


async def test_touch_just_before_the_deadline_keeps_it_alive(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    assert (await store.touch("a", IDLE - 1)).outcome is Outcome.LIVE
    assert (await store.touch("a", 2 * IDLE - 2)).outcome is Outcome.LIVE


async def test_absolute_timeout_ends_an_active_session(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    t = 0.0
    while t + 500 < ABSOLUTE:
        t += 500
        assert (await store.touch("a", t)).outcome is Outcome.LIVE
    assert (await store.touch("a", ABSOLUTE)).outcome is Outcome.LIFETIME
    await store.release("a")
    assert (await store.touch("a", ABSOLUTE + 1)).ended_reason == "lifetime"


async def test_end_tombstones_with_reason_and_records_the_successor(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    info = await store.end("a", 10.0, "client")
    assert info is not None and info.id == "a"
    assert await store.end("a", 11.0, "client") is None
    await store.create("b", 12.0, idle_timeout=IDLE, replica="r", previous="a")
    touch = await store.touch("a", 13.0)
    assert touch.outcome is Outcome.ENDED and touch.ended_reason == "client" and touch.successor == "b"


async def test_expire_due_ends_only_sessions_past_their_deadline(make_store: StoreFactory) -> None:
    store = make_store()
    for i in range(10):
        await store.create(f"s{i}", float(i), idle_timeout=IDLE, replica="r")
    await store.touch("s0", 300.0)  # moves s0's deadline to 900
    swept = await store.expire_due(IDLE + 4.5, limit=100)  # s1..s4 are due (deadlines 601..604)
    # A shared store sweeps by digest and never learns ids: identify the ended sessions by start time.
    assert sorted(e.session.created for e in swept.ended) == [1.0, 2.0, 3.0, 4.0]
    assert {e.reason for e in swept.ended} == {"idle"}
    assert not swept.more
    assert await store.count() == 6
    assert (await store.touch("s0", 605.0)).outcome is Outcome.LIVE


async def test_expire_due_works_in_bounded_batches(make_store: StoreFactory) -> None:
    store = make_store()
    for i in range(25):
        await store.create(f"s{i}", 0.0, idle_timeout=IDLE, replica="r")
    total = 0
    rounds = 0
    while True:
        swept = await store.expire_due(IDLE + 1, limit=10)
        assert len(swept.ended) <= 10
        total += len(swept.ended)
        rounds += 1
        if not swept.more:
            break
    assert total == 25 and rounds == 3
    assert await store.count() == 0


async def test_lifetime_reason_from_the_sweeper(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("a", 0.0, idle_timeout=ABSOLUTE, replica="r")
    swept = await store.expire_due(ABSOLUTE, limit=10)
    assert [(e.session.created, e.reason) for e in swept.ended] == [(0.0, "lifetime")]


async def test_set_idle_timeout_shortens_and_lengthens(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("short", 0.0, idle_timeout=IDLE, replica="r")
    await store.create("long", 0.0, idle_timeout=IDLE, replica="r")
    await store.set_idle_timeout("short", 5.0)
    await store.set_idle_timeout("long", 1200.0)
    swept = await store.expire_due(6.0, limit=10)
    assert len(swept.ended) == 1
    assert (await store.touch("short", 6.5)).outcome is Outcome.ENDED
    assert (await store.expire_due(IDLE + 1, limit=10)).ended == []
    assert (await store.touch("long", 1000.0)).outcome is Outcome.LIVE


async def test_cap_evicts_the_session_nearest_expiry(make_store: StoreFactory) -> None:
    store = make_store(max_sessions=2)
    await store.create("old", 0.0, idle_timeout=IDLE, replica="r")
    await store.create("busy", 1.0, idle_timeout=IDLE, replica="r")
    await store.touch("old", 50.0)  # now "busy" is the least recently active
    created = await store.create("new", 60.0, idle_timeout=IDLE, replica="r")
    assert created.evicted is not None and created.evicted.created == 1.0
    assert await store.count() == 2
    touch = await store.touch("busy", 61.0)
    assert touch.outcome is Outcome.ENDED and touch.ended_reason == "evicted"


async def test_cap_rejects_when_configured(make_store: StoreFactory) -> None:
    store = make_store(max_sessions=1, on_full="reject")
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    with pytest.raises(CapacityExceeded):
        await store.create("b", 1.0, idle_timeout=IDLE, replica="r")
    assert (await store.touch("a", 2.0)).outcome is Outcome.LIVE


# Memory only: Redis forgets tombstones and claims by key TTL in real time (test_redis_store.py).
async def test_memory_tombstones_are_forgotten_after_their_ttl_and_bounded() -> None:
    store = _memory(tombstone_ttl=100.0, max_tombstones=3)
    for i in range(5):
        await store.create(f"s{i}", 0.0, idle_timeout=IDLE, replica="r")
        await store.end(f"s{i}", 1.0, "client")
    # Only the three newest tombstones are kept.
    outcomes = [(await store.touch(f"s{i}", 2.0)).outcome for i in range(5)]
    assert outcomes == [Outcome.MISSING, Outcome.MISSING, Outcome.ENDED, Outcome.ENDED, Outcome.ENDED]
    await store.release("s4")
    assert (await store.touch("s4", 102.0)).outcome is Outcome.MISSING


async def test_concurrent_touches_lose_no_update(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    await asyncio.gather(*(store.touch("a", 1.0 + i / 1000) for i in range(200)))
    touch = await store.touch("a", 2.0)
    assert touch.session is not None and touch.session.requests == 202


async def test_concurrent_creates_each_count_once_and_respect_the_cap(make_store: StoreFactory) -> None:
    # On Redis these share pipelined round trips (ScriptBatcher): each must still get its own answer.
    store = make_store(max_sessions=5, on_full="reject")
    ids = [f"c{i}" for i in range(5)] * 2 + ["late"]
    results = await asyncio.gather(
        *(store.create(sid, 1.0, idle_timeout=IDLE, replica="r") for sid in ids), return_exceptions=True
    )
    created = [r for r in results if not isinstance(r, BaseException) and r.created]
    again = [r for r in results if not isinstance(r, BaseException) and not r.created]
    assert sorted(r.session.id for r in created) == [f"c{i}" for i in range(5)]
    assert sorted(r.session.id for r in again) == [f"c{i}" for i in range(5)]
    assert isinstance(results[-1], CapacityExceeded)
    assert await store.count() == 5


async def test_a_dead_id_is_claimed_by_one_toucher_until_its_successor_exists(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    await store.create("old", 0.0, idle_timeout=IDLE, replica="r")
    first, second = await asyncio.gather(store.touch("old", IDLE + 1), store.touch("old", IDLE + 1))
    assert {first.outcome, second.outcome} == {Outcome.EXPIRED, Outcome.PENDING}
    await store.create("new", IDLE + 2, idle_timeout=IDLE, replica="r", previous="old")
    late = await store.touch("old", IDLE + 3)
    assert late.outcome is Outcome.ENDED and late.ended_reason == "idle" and late.successor == "new"


async def test_an_unknown_id_is_claimed_and_its_successor_remembered(make_store: StoreFactory) -> None:
    store = make_store()
    assert (await store.touch("stranger", 0.0)).outcome is Outcome.MISSING
    assert (await store.touch("stranger", 0.1)).outcome is Outcome.PENDING
    await store.create("minted", 0.2, idle_timeout=IDLE, replica="r", previous="stranger")
    touch = await store.touch("stranger", 0.3)
    assert touch.outcome is Outcome.ENDED and touch.ended_reason == "unknown" and touch.successor == "minted"


async def test_adoption_releases_the_claim_on_the_adopted_id(make_store: StoreFactory) -> None:
    store = make_store()
    assert (await store.touch("kept", 0.0)).outcome is Outcome.MISSING
    await store.create("kept", 0.1, idle_timeout=IDLE, replica="r")
    assert (await store.touch("kept", 0.2)).outcome is Outcome.LIVE


async def test_memory_stale_claim_times_out() -> None:
    store = _memory(claim_ttl=5.0)
    assert (await store.touch("x", 0.0)).outcome is Outcome.MISSING
    assert (await store.touch("x", 1.0)).outcome is Outcome.PENDING
    assert (await store.touch("x", 6.0)).outcome is Outcome.MISSING  # the claimant died: someone else may try


def test_sealed_successor_opens_only_with_the_previous_id() -> None:
    sealed = seal_successor("NEWID-123", "OLDID-456")
    assert "NEWID" not in sealed
    assert open_successor(sealed, "OLDID-456") == "NEWID-123"
    assert open_successor(sealed, "OTHER-456") != "NEWID-123"


async def test_redis_sweeper_drops_index_entries_whose_session_key_expired_while_no_gateway_ran(
    redis: RedisServer,
) -> None:
    """The key TTLs are the backstop for when no gateway runs; the expiry index has no TTL, so a gateway that
    starts again finds due entries without a session. They are dropped: the count is right again, and the
    sweep ends (an entry left in place would be found due by every sweep, forever)."""
    store = RedisStore(
        redis.url,
        absolute_timeout=ABSOLUTE,
        max_sessions=1000,
        on_full="evict",
        tombstone_ttl=7200.0,
        shards=1,
    )
    try:
        for i in range(25):
            await store.create(f"s{i}", 0.0, idle_timeout=IDLE, replica="r")
        await store.create("live", 0.0, idle_timeout=3 * IDLE, replica="r")
        lapsed = [key async for key in store.client.scan_iter(match="*:s:*")]
        live_key = store._keys("live")[1][0]
        await store.client.delete(*(key for key in lapsed if key != live_key))  # what their TTLs do
        rounds = 0
        while True:
            swept = await store.expire_due(IDLE + 61, limit=10)
            assert swept.ended == []  # nobody saw them end: not counted as ended now
            rounds += 1
            assert rounds <= 3, "the sweep keeps finding the same due entries"
            if not swept.more:
                break
        assert await store.count() == 1
        assert (await store.touch("live", IDLE + 62)).outcome is Outcome.LIVE
    finally:
        await store.close()


# --- claims, tombstones and successors (found in review) --------------------------------------------------


async def test_a_claim_on_a_tombstone_lives_its_own_ttl_not_the_tombstones(make_store: StoreFactory) -> None:
    """A claim taken late in a tombstone's life outlives it: a concurrent touch waits (PENDING) instead of
    taking a second claim and starting a second conversation for the same dead id. (Redis keeps the claim in
    the tombstone's hash, which now lives at least claim_ttl.)"""
    store = make_store(tombstone_ttl=1.0, claim_ttl=30.0)
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    await store.end("a", 1.0, "client")  # remembered for 1 s
    await asyncio.sleep(0.3)
    assert (await store.touch("a", 1.3)).outcome is Outcome.ENDED  # this request claims "a"
    await asyncio.sleep(1.0)  # the tombstone's own TTL has run out; the claim is 1 s old of 30
    assert (await store.touch("a", 2.3)).outcome is Outcome.PENDING


async def test_an_id_tombstoned_twice_is_remembered_for_the_ttl_of_its_last_end(
    make_store: StoreFactory,
) -> None:
    store = make_store(tombstone_ttl=100.0)
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    await store.end("a", 1.0, "client")  # remembered until 101
    await store.create("a", 10.0, idle_timeout=IDLE, replica="r")  # the bot started "a" again
    await store.end("a", 90.0, "client")  # remembered until 190
    touch = await store.touch("a", 150.0)
    assert (touch.outcome, touch.ended_reason) == (Outcome.ENDED, "client")


async def test_recording_a_successor_keeps_the_tombstone_for_another_ttl(make_store: StoreFactory) -> None:
    """Other tabs still holding the dead id follow its successor for a whole tombstone_ttl after it started,
    however late in the tombstone's life that was."""
    store = make_store(tombstone_ttl=100.0)
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    await store.end("a", 1.0, "client")  # remembered until 101
    assert (await store.touch("a", 95.0)).outcome is Outcome.ENDED  # the first tab comes back, claims
    await store.create("b", 95.0, idle_timeout=IDLE, replica="r", previous="a")
    touch = await store.touch("a", 120.0)  # the second tab, 25 s later
    assert (touch.outcome, touch.successor) == (Outcome.ENDED, "b")


async def test_create_of_an_existing_session_still_records_it_as_the_successor(
    make_store: StoreFactory,
) -> None:
    """Upstream-issued mode: the bot answers a request for a dead id with the cookie of a session the gateway
    already holds; other tabs with the dead id follow to it."""
    store = make_store()
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    await store.end("a", 1.0, "client")
    await store.create("b", 2.0, idle_timeout=IDLE, replica="r")
    assert (await store.touch("a", 3.0)).outcome is Outcome.ENDED  # claims "a"
    again = await store.create("b", 4.0, idle_timeout=IDLE, replica="r", previous="a")
    assert not again.created
    touch = await store.touch("a", 5.0)
    assert (touch.outcome, touch.successor) == (Outcome.ENDED, "b")


async def test_concurrent_creates_at_the_cap_all_succeed_when_on_full_is_evict(
    make_store: StoreFactory,
) -> None:
    """A burst of new sessions at the cap: each create ends its own victim (Redis: inside its script; the
    creates of one event-loop turn all saw the same victim before, and most of them were refused)."""
    store = make_store(max_sessions=5, on_full="evict")
    for i in range(5):
        await store.create(f"old{i}", float(i), idle_timeout=IDLE, replica="r")
    results = await asyncio.gather(
        *(store.create(f"new{i}", 10.0, idle_timeout=IDLE, replica="r") for i in range(5)),
        return_exceptions=True,
    )
    assert all(not isinstance(r, BaseException) for r in results), results
    evicted = sorted(r.evicted.created for r in results if not isinstance(r, BaseException) and r.evicted)
    assert evicted == [0.0, 1.0, 2.0, 3.0, 4.0]  # every old session once, each counted by its evictor
    assert await store.count() == 5
    assert (await store.touch("old0", 11.0)).ended_reason == "evicted"


async def test_redis_cap_is_on_the_total_whatever_the_shards(redis: RedisServer) -> None:
    """16 shards (the default): the cap is on their total (kept per shard, 2 each, it refused the 6th to the
    13th session), and eviction takes the session nearest its deadline across shards."""
    store = RedisStore(
        redis.url, absolute_timeout=ABSOLUTE, max_sessions=32, on_full="reject", tombstone_ttl=7200.0
    )
    try:
        for i in range(32):
            await store.create(f"session-{i}", 1.0, idle_timeout=IDLE, replica="r")
        with pytest.raises(CapacityExceeded):
            await store.create("one-too-many", 1.0, idle_timeout=IDLE, replica="r")
    finally:
        await store.close()
    store = RedisStore(
        redis.url, absolute_timeout=ABSOLUTE, max_sessions=32, on_full="evict", tombstone_ttl=7200.0
    )
    try:
        shard = store._keys("newcomer")[1][2]  # its shard's index
        oldest = next(f"session-{i}" for i in range(32) if store._keys(f"session-{i}")[1][2] != shard)
        for i in range(32):
            if f"session-{i}" != oldest:
                await store.touch(f"session-{i}", 2.0)  # now later than `oldest`, in another shard
        created = await store.create("newcomer", 3.0, idle_timeout=IDLE, replica="r")
        assert created.evicted is not None and created.evicted.requests == 1  # the untouched one
        touch = await store.touch(oldest, 4.0)
        assert (touch.outcome, touch.ended_reason) == (Outcome.ENDED, "evicted")
        assert await store.count() == 32
    finally:
        await store.close()


async def test_a_clock_behind_the_last_request_never_moves_last_seen_back(make_store: StoreFactory) -> None:
    """time.time() can step back (NTP), and gateway replicas' clocks differ a little: a touch stamped before
    the session's last request keeps last_seen, and its idle gap is 0, not negative."""
    store = make_store()
    await store.create("s", 0.0, idle_timeout=IDLE, replica="r")
    await store.touch("s", 100.0)
    touch = await store.touch("s", 90.0)
    assert touch.outcome is Outcome.LIVE and touch.session is not None
    assert (touch.idle_gap, touch.session.last_seen, touch.session.requests) == (0.0, 100.0, 3)
    assert (await store.touch("s", 100.0 + IDLE - 1)).outcome is Outcome.LIVE  # counted from 100, not 90


async def test_mark_ended_tombstones_an_unknown_id_and_releases_its_claim(make_store: StoreFactory) -> None:
    store = make_store()
    assert (await store.touch("gone", 1.0)).outcome is Outcome.MISSING  # claimed
    await store.mark_ended("gone", 2.0, "client")
    touch = await store.touch("gone", 3.0)  # no claim left to wait on; the id is remembered as ended
    assert touch.outcome is Outcome.ENDED and touch.ended_reason == "client"
    await store.release("gone")


async def test_mark_ended_leaves_live_sessions_and_existing_tombstones_alone(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    await store.create("live", 0.0, idle_timeout=IDLE, replica="r")
    await store.mark_ended("live", 1.0, "client")
    assert (await store.touch("live", 2.0)).outcome is Outcome.LIVE
    await store.create("old", 0.0, idle_timeout=IDLE, replica="r")
    await store.end("old", 1.0, "bot")
    await store.mark_ended("old", 2.0, "client")
    assert (await store.touch("old", 3.0)).ended_reason == "bot"
    await store.release("old")
    await store.create("new", 4.0, idle_timeout=IDLE, replica="r", previous="old")
    await store.mark_ended("old", 5.0, "client")
    assert (await store.touch("old", 6.0)).successor == "new"  # the successor is kept


async def test_rename_moves_the_record_and_the_old_id_leads_to_the_new(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("a", 100.0, idle_timeout=IDLE, replica="r2")
    await store.touch("a", 150.0)
    renamed = await store.rename("a", "b", 160.0)
    assert renamed is not None
    assert (renamed.id, renamed.created, renamed.last_seen, renamed.requests, renamed.replica) == (
        "b",
        100.0,
        150.0,
        2,
        "r2",
    )
    assert await store.count() == 1
    old = await store.touch("a", 170.0)
    assert old.outcome is Outcome.ENDED and old.successor == "b" and old.ended_reason == "renamed"
    live = await store.touch("b", 170.0)
    assert live.outcome is Outcome.LIVE and live.session is not None and live.session.requests == 3
    # The deadline moved with it: idle from its last request, absolute from its first.
    assert (await store.expire_due(170.0 + IDLE - 1, 100)).ended == []
    swept = await store.expire_due(170.0 + IDLE, 100)
    assert [(e.reason, e.session.requests) for e in swept.ended] == [("idle", 3)]
    assert await store.count() == 0


async def test_rename_refuses_a_dead_old_id_or_an_existing_new_one(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.rename("nope", "b", 1.0) is None
    await store.create("a", 0.0, idle_timeout=IDLE, replica="r")
    await store.create("b", 0.0, idle_timeout=IDLE, replica="r")
    assert await store.rename("a", "b", 1.0) is None
    assert (await store.touch("a", 2.0)).outcome is Outcome.LIVE
    assert await store.count() == 2
