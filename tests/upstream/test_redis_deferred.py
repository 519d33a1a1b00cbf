"""The DeferredStore contract on both backends; with Redis, every `make()` is another gateway replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from gateway_helpers import eventually, free_port, make_config
from redis_server import RedisSentinel, RedisServer

from gateway.errors import StoreUnavailable
from gateway.sessions.store import redis_deferred
from gateway.sessions.store.redis_deferred import RedisDeferred
from gateway.upstream.deferred import RUNNING, Answer, DeferredStore, MemoryDeferred, new_token

KEEP = 60.0
ANSWER = Answer(
    200,
    "OK",
    (("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
    b'{"output": {"text": "hello"}}',
)

Make = Callable[..., DeferredStore]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """`make()` a store: the one MemoryDeferred (one process), or a new RedisDeferred (another replica)."""
    made: list[DeferredStore] = []
    url = request.getfixturevalue("redis").url if request.param == "redis" else ""

    def factory(max_pending: int = 100, on_expired: Callable[[], None] = lambda: None) -> DeferredStore:
        if request.param == "memory":
            if not made:
                made.append(MemoryDeferred(max_pending, on_expired=on_expired))
            return made[0]
        store = RedisDeferred(url, max_pending=max_pending, prefix="t", on_expired=on_expired)
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()


@pytest.fixture
async def replicas(redis: RedisServer) -> AsyncIterator[tuple[RedisDeferred, RedisDeferred]]:
    a = RedisDeferred(redis.url, max_pending=100, prefix="t")
    b = RedisDeferred(redis.url, max_pending=100, prefix="t")
    yield a, b
    await a.close()
    await b.close()


@pytest.fixture
async def raw(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis.url)
    yield client
    await client.aclose()


async def _started(
    store: DeferredStore, token: str, session: str | None, wait: float
) -> asyncio.Task[object]:
    """A pick-up waiting on `store` (given a moment to get to its wait)."""
    task = asyncio.ensure_future(store.take(token, session, wait))
    await asyncio.sleep(0.2)
    assert not task.done()
    return task


# --- the contract ------------------------------------------------------------------------------------------


async def test_open_finish_take_once(make: Make) -> None:
    store = make()
    token = new_token()
    assert await store.open(token, "s1", KEEP)
    await store.finish(token, ANSWER, KEEP)
    assert await store.take(token, "s1", 0) == ANSWER
    assert await store.take(token, "s1", 0) is None


async def test_unknown_token_is_none(make: Make) -> None:
    assert await make().take(new_token(), None, 0.2) is None


async def test_running_after_wait_then_the_answer(make: Make) -> None:
    a, b = make(), make()
    token = new_token()
    await a.open(token, "s1", KEEP)
    assert await b.take(token, "s1", 0.2) == RUNNING
    assert await b.take(token, "s1", 0) == RUNNING
    await a.finish(token, ANSWER, KEEP)
    assert await b.take(token, "s1", 0) == ANSWER


async def test_a_waiting_pick_up_wakes_when_another_replica_finishes(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_deferred, "FALLBACK", 30.0)  # only the published message can wake it in time
    a, b = make(), make()
    token = new_token()
    await a.open(token, None, KEEP)
    pick_up = await _started(b, token, None, 20.0)
    started = time.monotonic()
    await a.finish(token, ANSWER, KEEP)
    assert await asyncio.wait_for(pick_up, 5) == ANSWER
    assert time.monotonic() - started < 5


async def test_a_waiting_pick_up_on_the_finishing_replica_wakes(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_deferred, "FALLBACK", 30.0)
    store = make()
    token = new_token()
    await store.open(token, None, KEEP)
    pick_up = await _started(store, token, None, 20.0)
    await store.finish(token, ANSWER, KEEP)
    assert await asyncio.wait_for(pick_up, 5) == ANSWER


async def test_two_pick_ups_racing_on_two_replicas_deliver_once(make: Make) -> None:
    a, b, c = make(), make(), make()
    token = new_token()
    await a.open(token, "s1", KEEP)
    waiting = [await _started(store, token, "s1", 10.0) for store in (b, c)]
    await a.finish(token, ANSWER, KEEP)
    results = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert sorted(results, key=repr) == sorted([ANSWER, None], key=repr)

    token = new_token()  # the answer already there: the calls race in Redis
    await a.open(token, "s1", KEEP)
    await a.finish(token, ANSWER, KEEP)
    results = await asyncio.gather(*(store.take(token, "s1", 1.0) for store in (a, b, c, b, c)))
    assert results.count(ANSWER) == 1 and results.count(None) == 4


async def test_a_bound_token_answers_its_session_only(make: Make) -> None:
    store = make()
    token = new_token()
    await store.open(token, "s1", KEEP)
    await store.finish(token, ANSWER, KEEP)
    assert await store.take(token, "s2", 0.2) is None
    assert await store.take(token, None, 0.2) is None
    assert await store.take(token, "s1", 0) == ANSWER  # the wrong ones did not use it up


async def test_an_unbound_token_answers_anyone_holding_it(make: Make) -> None:
    store = make()
    token = new_token()
    await store.open(token, None, KEEP)
    await store.finish(token, ANSWER, KEEP)
    assert await store.take(token, "whoever", 0) == ANSWER


async def test_expired_answers_and_pending_tokens_are_gone(make: Make) -> None:
    store = make()
    done, running = new_token(), new_token()
    for token in (done, running):
        await store.open(token, None, 0.3)
    await store.finish(done, ANSWER, 0.3)
    await asyncio.sleep(0.5)
    assert await store.take(done, None, 0) is None
    assert await store.take(running, None, 0) is None
    await store.finish(running, ANSWER, KEEP)  # the bot answered after `keep`: nothing is kept
    assert await store.take(running, None, 0) is None


async def test_a_dropped_token_answers_none_even_to_a_waiting_pick_up(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_deferred, "FALLBACK", 30.0)
    a, b = make(), make()
    token = new_token()
    await a.open(token, None, KEEP)
    pick_up = await _started(b, token, None, 20.0)
    await a.drop(token)
    assert await asyncio.wait_for(pick_up, 5) is None
    await a.drop(token)  # again, or unknown: nothing happens
    await a.finish(token, ANSWER, KEEP)  # a late finish does not bring it back
    assert await b.take(token, None, 0) is None


async def test_tokens_nobody_picked_up_are_counted_expired_once(make: Make) -> None:
    expired: list[None] = []
    store = make(on_expired=lambda: expired.append(None))
    taken, lapsing = new_token(), new_token()
    for token in (taken, lapsing):
        await store.open(token, None, 0.3)
        await store.finish(token, ANSWER, 0.3)
    assert await store.take(taken, None, 0) == ANSWER
    await asyncio.sleep(0.5)
    await store.open(new_token(), None, KEEP)  # expiry is noticed as tokens open
    await store.open(new_token(), None, KEEP)
    assert len(expired) == 1


async def test_max_pending_frees_a_slot_on_delivery_and_expiry(make: Make) -> None:
    store = make(max_pending=2)
    first, second = new_token(), new_token()
    assert await store.open(first, None, KEEP)
    assert await store.open(second, None, 0.3)
    assert not await store.open(new_token(), None, KEEP)
    await store.finish(first, ANSWER, KEEP)
    assert await store.take(first, None, 0) == ANSWER
    assert await store.open(new_token(), None, KEEP)  # delivered: its slot is free
    assert not await store.open(new_token(), None, KEEP)
    await asyncio.sleep(0.5)
    assert await store.open(new_token(), None, KEEP)  # `second` expired


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00", b"\x00\xff\xfe\x80 not UTF-8 \xc3\x28", bytes(range(256)) * 64, "héllo ✓".encode()],
    ids=["empty", "nul", "invalid-utf8", "all-bytes-16k", "utf8"],
)
async def test_bodies_and_headers_round_trip_exactly(make: Make, body: bytes) -> None:
    a, b = make(), make()
    token = new_token()
    answer = Answer(502, "Bad Gateway", (("X-Name", 'é: "quoted", [x]'), ("Set-Cookie", "a=1")), body)
    await a.open(token, None, KEEP)
    await a.finish(token, answer, KEEP)
    taken = await b.take(token, None, 0)
    assert taken == answer
    assert isinstance(taken, Answer) and type(taken.body) is bytes and type(taken.headers[0]) is tuple


# --- Redis only --------------------------------------------------------------------------------------------


async def test_a_lost_message_is_covered_by_the_fallback_check(
    replicas: tuple[RedisDeferred, RedisDeferred], raw: aioredis.Redis
) -> None:
    a, b = replicas
    token = new_token()
    await a.open(token, None, KEEP)
    pick_up = await _started(b, token, None, 20.0)
    (key,) = await raw.keys("t:d:*")
    await raw.hset(key, mapping={"a": '[200,"OK",[]]', "b": b"late"})  # finished, never published
    started = time.monotonic()
    assert await asyncio.wait_for(pick_up, 5) == Answer(200, "OK", (), b"late")
    assert time.monotonic() - started < 5


async def test_a_finish_while_the_subscriber_is_away_still_wakes_the_pick_up(
    replicas: tuple[RedisDeferred, RedisDeferred], raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_deferred, "FALLBACK", 30.0)  # the resubscription's wake-up, not the fallback
    a, b = replicas
    token = new_token()
    await a.open(token, None, KEEP)
    pick_up = await _started(b, token, None, 20.0)
    assert await raw.client_kill_filter(_type="pubsub") >= 1  # every replica's subscriber
    await a.finish(token, ANSWER, KEEP)
    assert await asyncio.wait_for(pick_up, 5) == ANSWER


async def test_a_delivery_on_another_replica_frees_the_openers_slot(
    redis: RedisServer, replicas: tuple[RedisDeferred, RedisDeferred]
) -> None:
    _, b = replicas
    opener = RedisDeferred(redis.url, max_pending=1, prefix="t")
    try:
        token = new_token()
        assert await opener.open(token, None, KEEP)
        assert not await opener.open(new_token(), None, KEEP)
        await opener.finish(token, ANSWER, KEEP)
        assert await b.take(token, None, 0) == ANSWER
        await eventually(lambda: len(opener) == 0, what="the taken message")
        assert await opener.open(new_token(), None, KEEP)
    finally:
        await opener.close()


async def test_keys_hold_digests_never_the_token_or_session(
    replicas: tuple[RedisDeferred, RedisDeferred], raw: aioredis.Redis
) -> None:
    a, _ = replicas
    token = new_token()
    await a.open(token, "session-secret", KEEP)
    await a.finish(token, ANSWER, KEEP)
    (key,) = await raw.keys("*")
    assert key.startswith(b"t:d:") and token.encode() not in key
    record = await raw.hgetall(key)
    assert b"session-secret" not in b"".join(record.values())
    assert 0 < await raw.pttl(key) <= KEEP * 1000


async def test_an_existing_client_is_used_and_left_open(redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis.url)
    store = RedisDeferred(client, max_pending=10, prefix="t")
    token = new_token()
    await store.open(token, None, KEEP)
    assert await store.take(token, None, 0.2) == RUNNING
    await store.close()
    assert await client.ping()
    await client.aclose()
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisDeferred(aioredis.Redis.from_url(redis.url, decode_responses=True), max_pending=10)


async def test_for_config_uses_the_session_stores_redis(redis: RedisServer) -> None:
    config = make_config(
        "http://127.0.0.1:1",
        session={"store": "redis", "redis_url": redis.url, "redis_prefix": "cfg"},
        deferred={"after": 0.5, "max_pending": 1},
    )
    store = RedisDeferred.for_config(config)
    try:
        assert await store.open(new_token(), "s1", KEEP)
        assert not await store.open(new_token(), "s1", KEEP)
        client = aioredis.Redis.from_url(redis.url)
        assert [key[:6] for key in await client.keys("*")] == [b"cfg:d:"]
        await client.aclose()
    finally:
        await store.close()


async def test_through_a_sentinel(redis: RedisServer) -> None:
    sentinel = RedisSentinel(redis)
    sentinel.start()
    try:
        store = RedisDeferred(redis.url, max_pending=10, prefix="t", sentinels=(sentinel.address,))
        token = new_token()
        await store.open(token, None, KEEP)
        await store.finish(token, ANSWER, KEEP)
        assert await store.take(token, None, 0) == ANSWER
        await store.close()
    finally:
        sentinel.stop()


async def test_an_unreachable_redis_is_store_unavailable() -> None:
    store = RedisDeferred(f"redis://127.0.0.1:{free_port()}/0", max_pending=10)
    with pytest.raises(StoreUnavailable):
        await store.open(new_token(), None, KEEP)
    assert len(store) == 0  # the slot it held was given back
    with pytest.raises(StoreUnavailable):
        await store.take(new_token(), None, 0)
    await store.close()


async def test_close_stops_the_subscriber(replicas: tuple[RedisDeferred, RedisDeferred]) -> None:
    a, _ = replicas
    await a.open(new_token(), None, KEEP)
    subscriber = a._subscriber
    assert subscriber is not None and not subscriber.done()
    await a.close()
    assert subscriber.done() and a._subscriber is None
