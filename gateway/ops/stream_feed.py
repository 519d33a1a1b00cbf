"""GET /events with the Redis store: every replica's lifecycle events, read from the store's per-shard streams
(event_streams.py) while an operator watches, digests in place of session ids."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

from gateway.errors import StoreUnavailable
from gateway.ops.event_feed import Feed
from gateway.ops.event_streams import to_event
from gateway.ops.events import stop
from gateway.sessions.store import id_digest
from gateway.sessions.store.batch import bounded, bounded_each

_FEED_POLL: Final = 0.25  # seconds between the live feed's reads while someone watches


class StreamFeed:
    """GET /events with the Redis store: every replica's events, read from the streams while someone watches."""

    def __init__(
        self, client: Any, streams: Sequence[str], feed: Feed, include_id: bool, timeout: float = 1.0
    ) -> None:
        self._client = client
        self._timeout = timeout
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
        replies = await bounded_each(
            [self._client.xrevrange(s, count=1) for s in self._streams], self._timeout
        )
        if failed := next((r for r in replies if isinstance(r, BaseException)), None):
            raise failed
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
                    replies = await bounded_each(
                        [self._client.xread({s: last[s]}, count=100) for s in self._streams], self._timeout
                    )
                else:
                    replies = [await bounded(self._client.xread(last, count=100), self._timeout)]
            except StoreUnavailable:
                await asyncio.sleep(1.0)
                continue
            for reply in replies:
                if isinstance(reply, BaseException):
                    continue  # that stream's node: the next poll reads on from where it was
                for stream, entries in reply or []:
                    for entry_id, fields in entries:
                        last[stream] = entry_id
                        with contextlib.suppress(KeyError, ValueError, IndexError):  # not one of ours
                            self._feed.publish(self._for_operators(to_event(stream, entry_id, fields)))

    def _for_operators(self, event: dict[str, Any]) -> dict[str, Any]:
        # Operators watching see digests, as the admin listing shows no full ids either.
        if self._include_id:
            for key in ("session", "previous"):
                if event[key]:
                    event[key] = id_digest(event[key])
        return event
