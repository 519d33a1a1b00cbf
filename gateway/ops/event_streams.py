"""Lifecycle events of the Redis store: read from its per-shard streams and delivered by the replicas together.

The store's scripts append each event to `<prefix>:{<n>}:ev` in the same step as the change (store/redis.py,
_EMIT), so an event is written exactly when its change is. Delivery goes through one consumer group shared by
the replicas. Each shard's stream is read by one replica at a time, the holder of its lease (`<stream>:lease`,
renewed every round, lapsing after events.claim_idle), so a session's events reach the webhook in order. A
replica reads what it left unacknowledged first (XREADGROUP "0", then ">"), acknowledges after a 2xx or a drop
(XACK), and on taking a lease claims every entry the stream's last reader left pending (XAUTOCLAIM): a replica
killed mid-delivery loses nothing, another delivers its entries once the lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from gateway.config import EventsConfig
from gateway.ops.event_delivery import Sink, Verdict, age
from gateway.ops.event_feed import Feed
from gateway.ops.events import instance_name, iso, session_digest, stop
from gateway.ops.metrics import Metrics
from gateway.sessions.store.scripts import lua

log = logging.getLogger("gateway")

GROUP: Final = "session-gateway"
_BACKOFF_FIRST: Final = 0.5
_BACKOFF_MAX: Final = 60.0
_BACKLOG_EVERY: Final = 5.0  # seconds between reads of the held streams' backlog (XINFO GROUPS)
_FEED_POLL: Final = 0.25  # seconds between the live feed's reads while someone watches

_LEASE: Final = lua("lease")
_UNLEASE: Final = lua("unlease")

Entry = tuple[str, str, dict[str, str]]  # (stream, entry id, fields)


def to_event(stream: str, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stream entry as the webhook's JSON event; its id is the stream's and the entry's, unique and stable."""
    event: dict[str, Any] = {"id": f"{stream}-{entry_id}", "type": fields.get("type", "")}
    event["at"] = iso(int(entry_id.split("-", 1)[0]) / 1000)
    for key in ("session", "gateway", "previous", "reason", "replica"):
        event[key] = fields.get(key) or None
    if "duration" in fields:
        event["duration"] = float(fields["duration"])
    if "requests" in fields:
        event["requests"] = int(fields["requests"])
    return event


class StreamDelivery:
    """One replica's part of delivering the store's events to the sink."""

    def __init__(
        self,
        client: Any,  # the store's redis.asyncio Redis or RedisCluster (decode_responses=True)
        streams: Sequence[str],
        config: EventsConfig,
        sink: Sink,
        metrics: Metrics,
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._streams = tuple(streams)
        self._config = config
        self._sink = sink
        self._metrics = metrics
        self.consumer = f"{instance_name(config)}-{secrets.token_hex(4)}"
        self._lease_ms = str(int(config.claim_idle * 1000))
        self._lease = client.register_script(_LEASE)
        self._unlease = client.register_script(_UNLEASE)
        self.held: tuple[str, ...] = ()  # the streams whose lease this replica holds
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_backlog = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-stream-delivery")

    async def close(self, timeout: float) -> None:
        """Deliver what this replica's streams hold within `timeout`, then hand the leases back at once, so
        another replica goes on without waiting for them to lapse."""
        self._stopping = True
        await stop(self._task)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(max(0.1, timeout - 0.5)):  # the last half second is the leases'
                while batch := await self._read("0") or await self._read(">"):
                    if await self.deliver(batch) == "retry":
                        break
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await self._each(
                    [self._unlease(keys=[f"{s}:lease"], args=[self.consumer]) for s in self.held]
                )
        await self._sink.close()

    async def _each(self, calls: Sequence[Awaitable[Any]]) -> list[Any]:
        # The streams are on different slots: on a Cluster each call goes to its own node, all at once.
        return list(await asyncio.gather(*calls))

    async def _run(self) -> None:
        failures = 0
        ready = False
        while not self._stopping:
            try:
                if not ready:
                    await self._groups()
                    ready = True
                await self._take_leases()
                if time.monotonic() >= self._next_backlog:
                    await self._report_backlog()
                batch = await self._read("0") or await self._read(">")  # ours left unacknowledged first
                if not batch:
                    failures = 0
                    await asyncio.sleep(self._config.flush_interval)
                    continue
                verdict = await self.deliver(batch)
            except (RedisError, OSError, TimeoutError) as exc:
                log.info("event streams unavailable (%s); retrying", type(exc).__name__)
                verdict, ready = "retry", False
            except Exception:  # a bug of ours must not end delivery: one line, then retry as for a failure
                log.exception("event delivery failed")
                verdict = "retry"
            failures = failures + 1 if verdict == "retry" else 0
            if failures:
                ceiling = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (failures - 1))
                await asyncio.sleep(max(getattr(self._sink, "retry_after", 0.0), random.uniform(0, ceiling)))

    async def _groups(self) -> None:
        async def create(stream: str) -> None:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: another replica made it
                await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)

        await self._each([create(stream) for stream in self._streams])

    async def _take_leases(self) -> None:
        keys = [f"{stream}:lease" for stream in self._streams]
        answers = await self._each(
            [self._lease(keys=[k], args=[self.consumer, self._lease_ms]) for k in keys]
        )
        taken = [s for s, answer in zip(self._streams, answers, strict=True) if answer == 2]
        self.held = tuple(s for s, answer in zip(self._streams, answers, strict=True) if answer)
        if taken:
            await self._each([self._claim_all(stream) for stream in taken])

    async def _claim_all(self, stream: str) -> None:
        """Everything the stream's last reader left pending becomes this replica's, to deliver first."""
        start = "0-0"
        while True:
            # Not JUSTID: redis-py then returns the ids alone, without the cursor to go on from.
            reply = await self._client.xautoclaim(stream, GROUP, self.consumer, 0, start, count=1000)
            start = reply[0]
            if start == "0-0":
                break
        # The other consumers now hold nothing here, and none reads this stream while this replica holds its
        # lease: they go, or the group would keep one per process start forever.
        for consumer in await self._client.xinfo_consumers(stream, GROUP):
            if consumer["name"] != self.consumer and not consumer["pending"]:
                await self._client.xgroup_delconsumer(stream, GROUP, consumer["name"])

    async def _report_backlog(self) -> None:
        """events_queue: the entries of the streams this replica holds not yet acknowledged (read or not), so
        the replicas' sum is the whole backlog. Read every _BACKLOG_EVERY seconds, not every round."""
        self._next_backlog = time.monotonic() + _BACKLOG_EVERY
        groups = await self._each([self._client.xinfo_groups(stream) for stream in self.held])
        backlog = 0
        for stream_groups in groups:
            for group in stream_groups:
                if group["name"] == GROUP:
                    backlog += int(group["pending"]) + int(group.get("lag") or 0)
        self._metrics.events_queue.set(backlog)

    async def _read(self, start: str) -> list[Entry]:
        if not self.held:
            return []
        count = self._config.batch
        if self._cluster:
            replies = await self._each(
                [self._client.xreadgroup(GROUP, self.consumer, {s: start}, count=count) for s in self.held]
            )
        else:
            replies = [
                await self._client.xreadgroup(
                    GROUP, self.consumer, dict.fromkeys(self.held, start), count=count
                )
            ]
        batch: list[Entry] = []
        for reply in replies:
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    if fields:
                        batch.append((stream, entry_id, fields))
                    else:  # trimmed by retention while pending: nothing left to deliver
                        await self._client.xack(stream, GROUP, entry_id)
        return batch[:count]

    async def deliver(self, batch: list[Entry]) -> Verdict:
        """Send one batch; acknowledge what was delivered or dropped, count what happened."""
        events = [to_event(stream, entry_id, fields) for stream, entry_id, fields in batch]
        verdict = await self._sink.send(events)
        now = time.time()
        done = batch
        if verdict == "retry":
            expired = [age(event, now) >= self._config.max_age for event in events]
            done = [entry for entry, old in zip(batch, expired, strict=True) if old]
            for event, old in zip(events, expired, strict=True):
                self._metrics.events.labels(type=event["type"], outcome="dropped" if old else "retried").inc()
            if done:
                log.warning("dropped %d events older than events.max_age after failed deliveries", len(done))
        else:
            for event in events:
                self._metrics.events.labels(type=event["type"], outcome=verdict).inc()
                if verdict == "delivered":
                    self._metrics.events_lag.observe(max(0.0, age(event, now)))
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _ in done:
            by_stream.setdefault(stream, []).append(entry_id)
        await self._each([self._client.xack(s, GROUP, *ids) for s, ids in by_stream.items()])
        return verdict


class StreamFeed:
    """GET /events with the Redis store: every replica's events, read from the streams while someone watches."""

    def __init__(self, client: Any, streams: Sequence[str], feed: Feed, include_id: bool) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._streams = tuple(streams)
        self._feed = feed
        self._include_id = include_id
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-stream-feed")

    async def close(self) -> None:
        await stop(self._task)

    async def _latest(self) -> dict[str, str]:
        """Each stream's last entry id: a watcher sees events from when it came, not the retained history."""
        replies = await asyncio.gather(*(self._client.xrevrange(s, count=1) for s in self._streams))
        return {s: (r[0][0] if r else "0-0") for s, r in zip(self._streams, replies, strict=True)}

    async def _run(self) -> None:
        last: dict[str, str] | None = None
        while True:
            await asyncio.sleep(
                _FEED_POLL
            )  # polled, not blocking: a blocked read would hold a store connection
            if not self._feed.active:
                last = None
                continue
            try:
                if last is None:
                    last = await self._latest()
                    continue
                if self._cluster:
                    replies = await asyncio.gather(
                        *(self._client.xread({s: last[s]}, count=100) for s in self._streams)
                    )
                else:
                    replies = [await self._client.xread(last, count=100)]
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(1.0)
                continue
            for reply in replies:
                for stream, entries in reply or []:
                    for entry_id, fields in entries:
                        last[stream] = entry_id
                        self._feed.publish(self._for_operators(to_event(stream, entry_id, fields)))

    def _for_operators(self, event: dict[str, Any]) -> dict[str, Any]:
        # Operators watching see digests, as the admin listing shows no full ids either.
        if self._include_id:
            for key in ("session", "previous"):
                if event[key]:
                    event[key] = session_digest(event[key])
        return event
