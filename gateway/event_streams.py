"""Lifecycle events of the Redis store: read from its per-shard streams and delivered by every replica together.

The store's scripts append each event to `{<prefix>:<n>}:ev` in the same step as the change. Delivery goes through
one consumer group shared by the replicas: each reads new entries (XREADGROUP), acknowledges them once the
receiver took them (XACK after a 2xx) or dropped them, retries its own unacknowledged ones, and claims entries a
dead replica left pending for `claim_idle` (XAUTOCLAIM), so a replica killed mid-delivery loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from gateway.config import EventsConfig
from gateway.event_delivery import Sink, age
from gateway.event_feed import Feed
from gateway.events import iso
from gateway.metrics import Metrics

log = logging.getLogger("gateway")

GROUP: Final = "session-gateway"
_NUMBERS: Final = ("duration", "requests")
_BACKOFF_MAX: Final = 60.0


def to_event(stream: str, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stream entry as the webhook's JSON event; its id is the stream's and entry's, unique and stable."""
    event: dict[str, Any] = {"id": f"{stream}-{entry_id}", "type": fields["type"]}
    event["at"] = iso(int(entry_id.split("-", 1)[0]) / 1000)
    for key in ("session", "previous", "reason", "replica", "gateway"):
        event[key] = fields.get(key) or None
    for key in _NUMBERS:
        if key in fields:
            event[key] = float(fields[key]) if key == "duration" else int(fields[key])
    return event


class StreamDelivery:
    """One replica's part of delivering the store's events to the sink."""

    def __init__(
        self,
        client: Any,  # redis.asyncio.Redis (decode_responses=True)
        streams: Sequence[str],
        config: EventsConfig,
        sink: Sink,
        metrics: Metrics,
        consumer: str,
        claim_idle: float = 60.0,
    ) -> None:
        self._client = client
        self._streams = list(streams)
        self._config = config
        self._sink = sink
        self._metrics = metrics
        self._consumer = consumer
        self._claim_ms = int(claim_idle * 1000)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-stream-delivery")

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._sink.close()

    async def _groups(self) -> None:
        for stream in self._streams:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: another replica made it
                await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)

    async def _run(self) -> None:
        failures = 0
        ready = False
        last_claim = 0.0
        while not self._stopping:
            try:
                if not ready:
                    await self._groups()
                    ready = True
                # Our own unacknowledged entries first (a retry keeps the order), then new ones.
                batch = await self._read("0") or await self._read(">")
                if time.monotonic() - last_claim > self._claim_ms / 2000:
                    batch = batch or await self._claim()
                    last_claim = time.monotonic()
                if not batch:
                    await asyncio.sleep(self._config.flush_interval)
                    continue
                verdict = await self.deliver(batch)
            except (RedisError, OSError) as exc:
                log.info("event streams unavailable (%s); retrying", type(exc).__name__)
                verdict, ready = "retry", False
            failures = failures + 1 if verdict == "retry" else 0
            if failures:
                ceiling = min(_BACKOFF_MAX, 0.5 * 2 ** (failures - 1))
                await asyncio.sleep(max(getattr(self._sink, "retry_after", 0.0), random.uniform(0, ceiling)))

    async def _read(self, start: str) -> list[tuple[str, str, dict[str, str]]]:
        reply = await self._client.xreadgroup(
            GROUP, self._consumer, dict.fromkeys(self._streams, start), count=self._config.batch
        )
        batch = []
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields:
                    batch.append((stream, entry_id, fields))
                else:  # trimmed by retention while pending: nothing left to deliver
                    await self._client.xack(stream, GROUP, entry_id)
        return batch

    async def _claim(self) -> list[tuple[str, str, dict[str, str]]]:
        """Entries another replica read and never acknowledged for claim_idle: it died, or lost Redis."""
        claimed = []
        for stream in self._streams:
            reply = await self._client.xautoclaim(
                stream, GROUP, self._consumer, self._claim_ms, "0-0", count=self._config.batch
            )
            claimed += [(stream, entry_id, fields) for entry_id, fields in reply[1] if fields]
        return claimed

    async def deliver(self, batch: list[tuple[str, str, dict[str, str]]]) -> str:
        events = [to_event(stream, entry_id, fields) for stream, entry_id, fields in batch]
        verdict = await self._sink.send(events)
        now = time.time()
        done = batch
        if verdict == "retry":
            done = [
                entry
                for entry, event in zip(batch, events, strict=True)
                if age(event, now) >= self._config.max_age
            ]
            for event in events:
                outcome = "dropped" if age(event, now) >= self._config.max_age else "retried"
                self._metrics.events.labels(type=event["type"], outcome=outcome).inc()
        else:
            for event in events:
                self._metrics.events.labels(type=event["type"], outcome=verdict).inc()
                if verdict == "delivered":
                    self._metrics.events_lag.observe(max(0.0, age(event, now)))
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _ in done:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            await self._client.xack(stream, GROUP, *ids)
        return verdict


class StreamFeed:
    """GET /events with the Redis store: every replica's events, read from the streams while someone watches."""

    def __init__(self, client: Any, streams: Sequence[str], feed: Feed) -> None:
        self._client = client
        self._streams = list(streams)
        self._feed = feed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-stream-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        last = dict.fromkeys(self._streams, "$")
        while True:
            if not self._feed.active:
                last = dict.fromkeys(self._streams, "$")  # nobody watched: start from now
                await asyncio.sleep(0.5)
                continue
            try:
                reply = await self._client.xread(last, count=100, block=1000)
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
                continue
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    last[stream] = entry_id
                    self._feed.publish(to_event(stream, entry_id, fields))
