"""ScriptBatcher against a real redis-server: concurrent calls share round trips, results stay per call."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer

from gateway.errors import StoreUnavailable
from gateway.sessions.store.batch import ScriptBatcher, bounded_each

ECHO = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the shared redis-server, flushed for this test."""
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    yield client
    await client.aclose()


async def _reads(client: aioredis.Redis) -> int:
    """Read events the server processed: one per round trip a client makes (fewer when batched)."""
    return int((await client.info("stats"))["total_reads_processed"])


async def test_concurrent_calls_get_their_own_results_in_fewer_round_trips(client: aioredis.Redis) -> None:
    batcher = ScriptBatcher(client, client.register_script(ECHO), timeout=2.0)
    await batcher(["warm"], ["x"])  # loads the script (the first EVALSHA meets NOSCRIPT)
    before = await _reads(client)

    results = await asyncio.gather(*(batcher([f"k{i}"], [f"v{i}"]) for i in range(50)))

    assert results == [[f"k{i}", f"v{i}", 1] for i in range(50)]
    after = await _reads(client)
    assert after - before - 1 < 10, "50 concurrent calls should share a few round trips"  # -1: the INFO
    await batcher.close()


async def test_a_server_that_lost_its_scripts_still_answers(client: aioredis.Redis) -> None:
    batcher = ScriptBatcher(client, client.register_script(ECHO), timeout=2.0)
    assert await batcher(["a"], ["1"]) == ["a", "1", 1]
    await client.script_flush()

    results = list(await asyncio.gather(batcher(["a"], ["2"]), batcher(["b"], ["3"])))
    assert results == [["a", "2", 2], ["b", "3", 1]]
    await batcher.close()


async def test_a_burst_after_the_server_lost_its_scripts_loads_the_script_once(
    client: aioredis.Redis,
) -> None:
    """After a restart or failover every call of the first batches meets NOSCRIPT: the batch loads the script
    once and runs them again together (one call at a time, a burst took a connection and three round trips
    each, and timed out)."""
    batcher = ScriptBatcher(client, client.register_script(ECHO), timeout=2.0)
    try:
        await batcher(["warm"], ["x"])
        await client.script_flush()
        await client.config_resetstat()

        results = await asyncio.gather(*(batcher([f"k{i}"], [f"v{i}"]) for i in range(500)))

        assert results == [[f"k{i}", f"v{i}", 1] for i in range(500)]
        stats = await client.info("commandstats")
        assert stats["cmdstat_script|load"]["calls"] == 1
        assert stats["cmdstat_evalsha"]["calls"] == 1000  # each call: NOSCRIPT, then run
    finally:
        await batcher.close()


async def test_a_script_error_fails_only_its_own_call(client: aioredis.Redis) -> None:
    script = client.register_script("if ARGV[1] == 'bad' then return redis.error_reply('nope') end return 1")
    batcher = ScriptBatcher(client, script, timeout=2.0)
    await batcher(["k"], ["ok"])

    results: list[object] = list(
        await asyncio.gather(batcher(["k"], ["ok"]), batcher(["k"], ["bad"]), return_exceptions=True)
    )
    good, bad = results

    assert good == 1
    assert isinstance(bad, StoreUnavailable)
    await batcher.close()


async def test_an_unreachable_server_fails_every_waiting_call_within_the_timeout() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True)  # nothing listens there
    batcher = ScriptBatcher(client, client.register_script(ECHO), timeout=0.5)

    results = await asyncio.wait_for(
        asyncio.gather(*(batcher([f"k{i}"], ["v"]) for i in range(5)), return_exceptions=True), 5
    )

    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert len({id(r) for r in results}) == 5  # one exception each, not one shared instance
    await batcher.close()
    await client.aclose()


# --- calls whose callers already left ----------------------------------------------------

INCR = "return redis.call('INCR', KEYS[1])"


async def test_a_call_cancelled_before_its_flush_is_not_run_and_the_others_get_their_results(
    client: aioredis.Redis,
) -> None:
    batcher = ScriptBatcher(client, client.register_script(INCR), timeout=2.0)
    try:
        assert await batcher(["warm"], []) == 1  # the script is loaded
        leaving = asyncio.ensure_future(batcher(["gone"], []))
        staying = asyncio.ensure_future(batcher(["here"], []))
        await asyncio.sleep(0)  # both queued, the flush not yet run
        leaving.cancel()
        assert await asyncio.wait_for(staying, 5) == 1
        with pytest.raises(asyncio.CancelledError):
            await leaving
        # In the store: a touch of an abandoned request still counts, extends, or claims the session.
        assert await client.get("gone") is None
    finally:
        await batcher.close()


async def test_a_batch_cut_short_leaves_no_reply_for_the_next_caller(
    redis: RedisServer, client: aioredis.Redis
) -> None:
    # One connection, so the next batch would read the late replies if the cut-short one were reused.
    single = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            redis.url, max_connections=1, decode_responses=True
        )
    )
    batcher = ScriptBatcher(single, single.register_script(ECHO), timeout=0.3)
    try:
        assert await batcher(["warm"], ["x"]) == ["warm", "x", 1]
        await client.execute_command("CLIENT", "PAUSE", "800", "WRITE")  # the scripts write: they wait
        late = await asyncio.gather(batcher(["a"], ["1"]), batcher(["b"], ["2"]), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in late), late
        await asyncio.sleep(0.7)  # the pause ends; the server runs the late calls and answers them

        assert await asyncio.wait_for(batcher(["c"], ["3"]), 5) == ["c", "3", 1]
    finally:
        await batcher.close()
        await single.aclose(close_connection_pool=True)


# --- calls whose callers did not get their replies ------------------------------------------------------


Lost = list[tuple[list[str], list[Any], object]]


def _recording_lost(client: aioredis.Redis, timeout: float) -> tuple[ScriptBatcher, Lost]:
    """An ECHO batcher and the (keys, args, result) of each call it reports lost."""
    lost: Lost = []
    batcher = ScriptBatcher(
        client,
        client.register_script(ECHO),
        timeout=timeout,
        on_lost=lambda keys, args, result: lost.append((list(keys), args, result)),
    )
    return batcher, lost


async def test_calls_whose_replies_came_too_late_are_reported_lost(client: aioredis.Redis) -> None:
    """The batch was sent, the server ran it, the replies missed the timeout: each call is reported with its
    keys and arguments and no result (the store disowns what such a touch may have claimed)."""
    batcher, lost = _recording_lost(client, timeout=0.3)
    try:
        await batcher(["warm"], ["x"])
        await client.execute_command("CLIENT", "PAUSE", "600", "WRITE")
        late = await asyncio.gather(batcher(["a"], ["1"]), batcher(["b"], ["2"]), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in late), late
        assert lost == [(["a"], ["1"], None), (["b"], ["2"], None)]
    finally:
        await batcher.close()


async def test_calls_never_sent_are_not_reported_lost() -> None:
    """Nothing reached a server (none listens): nothing may have run, so there is nothing to disown."""
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True)
    lost: list[object] = []
    batcher = ScriptBatcher(
        client, client.register_script(ECHO), timeout=0.5, on_lost=lambda *call: lost.append(call)
    )
    try:
        with pytest.raises(StoreUnavailable):
            await batcher(["a"], ["1"])
        assert lost == []
    finally:
        await batcher.close()
        await client.aclose()


async def test_a_caller_cancelled_in_the_turn_its_reply_arrived_is_reported_lost(
    client: aioredis.Redis,
) -> None:
    """The replies are handed out and, in the same loop turn, the client's disconnect cancels one caller: its
    task resumes with CancelledError although its future holds the reply. The reply is reported lost."""
    batcher, lost = _recording_lost(client, timeout=2.0)
    try:
        await batcher(["warm"], ["x"])
        staying = asyncio.ensure_future(batcher(["a"], ["1"]))
        leaving = asyncio.ensure_future(batcher(["b"], ["2"]))
        await asyncio.sleep(0)  # both queued in one batch
        batcher._pending[0][2].add_done_callback(lambda _: leaving.cancel())  # the disconnect, that turn
        assert await staying == ["a", "1", 1]
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert lost == [(["b"], ["2"], ["b", "2", 1])]
    finally:
        await batcher.close()


async def test_bounded_each_cancelled_before_its_calls_ran_leaves_none_unawaited(
    client: aioredis.Redis,
) -> None:
    """A delivery task stopped in the turn it gathered its calls: each call still waiting to start is closed,
    so none warns "never awaited" when collected (a CI run failed on that warning)."""
    calls = [client.ping(), client.ping()]
    gathering = asyncio.ensure_future(bounded_each(calls, 2.0))
    await asyncio.sleep(0)  # gather has made its tasks; they have not run
    gathering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gathering
    assert [inspect.getcoroutinestate(call) for call in calls] == [inspect.CORO_CLOSED] * 2

    replies = await bounded_each([client.ping(), client.get("k")], 2.0)
    assert replies == [True, None]
    down = aioredis.Redis(port=1, socket_connect_timeout=0.5)
    [failed] = await bounded_each([down.ping()], 2.0)
    assert isinstance(failed, StoreUnavailable)
    await down.aclose()
