"""Lifecycle events with the memory store: produced once, delivered to a real webhook receiver that fails and
recovers, signed, retried, dropped when they must be, flushed on shutdown; the admin port's SSE feed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from event_receiver import SECRET, Receiver
from gateway_helpers import LOOPBACK, eventually
from redis_server import RedisServer
from session_helpers import Bot, FakeClock, Rig, make_session_config, start_rig

from gateway.app import admin_app_for
from gateway.config import EventsConfig
from gateway.ops.events import session_digest


async def events_rig(
    aiohttp_client: Any, clock: FakeClock, bot_url: str, receiver: Receiver, **events: Any
) -> Rig:
    # A short grace: the flush at shutdown must not retry a failing receiver for the default 20 s.
    config = make_session_config(
        bot_url, session={"sweep_interval": 0.05}, environ={"GATEWAY_LISTEN_SHUTDOWN_TIMEOUT": "1"}
    )
    options = {"sink": "webhook", "url": receiver.url, "secret": SECRET, "flush_interval": 0.05, **events}
    config = dataclasses.replace(config, events=EventsConfig(**options))
    return await start_rig(aiohttp_client, config, clock)


async def test_a_conversation_produces_each_start_and_end_once(
    demo: Bot, receiver: Receiver, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await events_rig(aiohttp_client, clock, demo.url, receiver, instance="gw-1")
    sid = (await rig.send()).session_id
    assert sid is not None
    await rig.send(header=sid)
    clock.advance(30)
    await rig.send("/endsession", method="POST", header=sid)
    after = (await rig.send(header=sid)).session_id
    clock.advance(601)  # the sweeper ends the second one: idle
    await eventually(lambda: len(receiver.of("session.ended")) == 2, what="two ended events")
    started, ended = receiver.of("session.started"), receiver.of("session.ended")
    assert [(e["session"], e["reason"], e["previous"]) for e in started] == [
        (sid, "first", None),
        (after, "ended", sid),
    ]
    assert [(e["session"], e["reason"], e["requests"]) for e in ended] == [
        (sid, "client", 3),
        (after, "idle", 1),
    ]
    assert ended[0]["duration"] == 30.0 and ended[0]["replica"] == "default"
    assert all(e["gateway"] == "gw-1" and e["at"].endswith("Z") for e in receiver.events)
    assert len({e["id"] for e in receiver.events}) == 4 and receiver.bad_signatures == 0
    assert rig.metric("events_total", type="session.ended", outcome="delivered") == 2


async def test_failures_are_retried_until_delivered_and_4xx_is_dropped(
    demo: Bot, receiver: Receiver, aiohttp_client: Any, clock: FakeClock
) -> None:
    receiver.failures = [500, "reset", 503]
    rig = await events_rig(aiohttp_client, clock, demo.url, receiver)
    await rig.send()
    await eventually(
        lambda: len(receiver.of("session.started")) == 1, timeout=15, what="delivered after 3 failures"
    )
    assert receiver.attempts == 4
    assert rig.metric("events_total", type="session.started", outcome="retried") == 3
    receiver.failures = [400]
    await rig.send()
    await eventually(
        lambda: rig.metric("events_total", type="session.started", outcome="dropped") == 1,
        what="a 400 drops it",
    )
    assert len(receiver.of("session.started")) == 1


async def test_a_delivered_batch_is_not_followed_by_an_empty_one(
    demo: Bot, receiver: Receiver, aiohttp_client: Any, clock: FakeClock
) -> None:
    """Putting back the nothing a delivered batch left woke the delivery, which POSTed an empty batch after
    every delivery (a CI run saw it take the 400 meant for the next event)."""
    rig = await events_rig(aiohttp_client, clock, demo.url, receiver)
    for sent in (1, 2):
        await rig.send()
        await eventually(lambda n=sent: len(receiver.of("session.started")) == n, what="delivered")
        await asyncio.sleep(0.3)  # six flush intervals
        assert receiver.attempts == sent
    assert [len(batch) for batch in receiver.batches] == [1, 1]


async def test_events_older_than_max_age_are_dropped(
    demo: Bot, receiver: Receiver, aiohttp_client: Any, clock: FakeClock
) -> None:
    receiver.failures = [500] * 1000
    rig = await events_rig(aiohttp_client, clock, demo.url, receiver, max_age=0.3)
    await rig.send()
    await eventually(
        lambda: rig.metric("events_total", type="session.started", outcome="dropped") == 1,
        what="dropped by age",
    )
    assert receiver.events == []


async def test_a_full_queue_drops_and_counts(
    demo: Bot, receiver: Receiver, aiohttp_client: Any, clock: FakeClock
) -> None:
    receiver.failures = [500] * 1000
    rig = await events_rig(aiohttp_client, clock, demo.url, receiver, max_queue=2, flush_interval=30)
    for _ in range(5):
        await rig.send()
    assert rig.metric("events_total", type="session.started", outcome="dropped") == 3


async def test_without_ids_events_carry_digests(
    demo: Bot, receiver: Receiver, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await events_rig(aiohttp_client, clock, demo.url, receiver, include_id=False)
    sid = (await rig.send()).session_id
    assert sid is not None
    await eventually(lambda: len(receiver.events) == 1, what="the start")
    assert receiver.events[0]["session"] == session_digest(sid) != sid


async def test_shutdown_flushes_the_queue(
    demo: Bot, receiver: Receiver, aiohttp_client: Any, clock: FakeClock
) -> None:
    rig = await events_rig(aiohttp_client, clock, demo.url, receiver, flush_interval=60, batch=1000)
    for _ in range(3):
        await rig.send()
    assert receiver.events == []  # waiting for a fuller batch
    await rig.client.close()  # the app's cleanup: the queue is flushed
    assert len(receiver.of("session.started")) == 3


async def test_shutdown_lets_a_batch_being_sent_get_its_answer_and_retries_it(
    demo: Bot, receiver: Receiver, aiohttp_client: Any, clock: FakeClock
) -> None:
    """Stopping cancelled the POST in flight and its batch, taken from the queue, was lost uncounted."""
    rig = await events_rig(aiohttp_client, clock, demo.url, receiver)
    receiver.held = True
    await rig.send()
    await eventually(lambda: receiver.attempts == 1, what="the POST in flight")
    closing = asyncio.ensure_future(rig.client.close())  # the app's cleanup, within shutdown_timeout (1 s)
    await asyncio.sleep(0.2)
    receiver.held = False
    receiver.release.set()  # the held POST gets its 503, then the batch is sent again
    await closing
    assert len(receiver.of("session.started")) == 1 and receiver.attempts == 2
    assert rig.metric("events_total", type="session.started", outcome="dropped") == 0


async def test_the_admin_feed_streams_events_and_cuts_a_slow_reader(
    demo: Bot, aiohttp_client: Any, aiohttp_server: Any, clock: FakeClock
) -> None:
    rig = await start_rig(
        aiohttp_client, make_session_config(demo.url), clock
    )  # events.sink = "none": the feed still works
    admin = await aiohttp_server(admin_app_for(rig.app))
    async with aiohttp.ClientSession() as http, http.get(f"http://{LOOPBACK}:{admin.port}/events") as feed:
        assert feed.headers["Content-Type"] == "text/event-stream"
        assert (await feed.content.readline()).startswith(b":")
        await feed.content.readline()
        sid = (await rig.send()).session_id
        lines = [await asyncio.wait_for(feed.content.readline(), 5) for _ in range(3)]
        assert lines[1] == b"event: session.started\n"
        assert sid is not None
        # Operators watching see digests, as the admin listing shows no full ids either.
        assert json.loads(lines[2].removeprefix(b"data: "))["session"] == session_digest(sid)


async def test_the_redis_stream_sink_appends_events_for_your_consumers(
    demo: Bot, aiohttp_client: Any, clock: FakeClock, redis: RedisServer
) -> None:
    config = make_session_config(demo.url, environ={"GATEWAY_LISTEN_SHUTDOWN_TIMEOUT": "1"})
    config = dataclasses.replace(
        config,
        session=dataclasses.replace(config.session, redis_url=redis.url),  # the store stays in memory
        events=EventsConfig(sink="redis-stream", stream="test:events", flush_interval=0.05),
    )
    rig = await start_rig(aiohttp_client, config, clock)
    sid = (await rig.send()).session_id
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:

        async def entries() -> list[Any]:
            return list(await client.xrange("test:events"))

        await eventually(entries, what="an entry in the stream")
        (_, fields), *_ = await entries()
        assert (
            fields["type"] == "session.started" and fields["session"] == sid and fields["reason"] == "first"
        )
    finally:
        await client.aclose()


def test_events_with_the_redis_store_are_accepted_now_its_scripts_write_them() -> None:
    from gateway.config import load_config

    env = {
        "GATEWAY_EVENTS_SINK": "webhook",
        "GATEWAY_EVENTS_URL": "http://127.0.0.1:1/",
        "GATEWAY_SESSION_STORE": "redis",
    }
    config = load_config(None, environ=env)
    assert (config.events.sink, config.session.store) == ("webhook", "redis")
