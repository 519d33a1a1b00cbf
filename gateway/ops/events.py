"""Session lifecycle events: `session.started`, `session.ended`, `session.renamed`, each produced once.

With the memory store the SessionManager produces them here, into a bounded in-process queue that a sink
drains (gateway/ops/event_delivery.py), and to the admin port's live feed. The Redis store's scripts produce their
own, in the same atomic step as the change (store/redis.py), delivered by gateway/ops/event_streams.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.config import EventsConfig
from gateway.ops.event_feed import Feed
from gateway.sessions.store import SessionInfo
from gateway.sessions.store import id_digest as session_digest  # the store's keys use the same

EventType = Literal["session.started", "session.ended", "session.renamed"]


def instance_name(config: EventsConfig) -> str:
    """The gateway instance named in events: events.instance, else the host name (the pod's, in Kubernetes)."""
    return config.instance or socket.gethostname()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(events: list[dict[str, Any]]) -> bytes:
    """A batch as a webhook posts it."""
    return json.dumps({"events": events}, separators=(",", ":")).encode()


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a delivery or feed task and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _digest_or_none(session_id: str | None) -> str | None:
    return session_digest(session_id) if session_id else None


class EventQueue:
    """A bounded FIFO of events; past `max_queue` new events are dropped (and counted by the caller)."""

    def __init__(self, max_queue: int, on_drop: Callable[[str], None]) -> None:
        self._items: deque[dict[str, Any]] = deque()
        self._max = max_queue
        self._on_drop = on_drop
        self.ready = asyncio.Event()

    def put(self, event: dict[str, Any]) -> None:
        if len(self._items) >= self._max:
            self._on_drop(event["type"])
            return
        self._items.append(event)
        self.ready.set()

    def take(self, limit: int) -> list[dict[str, Any]]:
        batch = [self._items.popleft() for _ in range(min(limit, len(self._items)))]
        if not self._items:
            self.ready.clear()
        return batch

    def put_back(self, batch: list[dict[str, Any]]) -> None:
        """A batch that failed goes back to the front, in order (a retry keeps the order per session)."""
        if batch:  # a batch all delivered puts nothing back: no wake-up for an empty send
            self._items.extendleft(reversed(batch))
            self.ready.set()

    def __len__(self) -> int:
        return len(self._items)


class Emitter:
    """Builds events in process (memory store) and hands them to the queue and to live subscribers."""

    def __init__(
        self,
        config: EventsConfig,
        queue: EventQueue | None,
        feed: Feed,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._include_id = config.include_id
        self._gateway = instance_name(config)
        self._queue = queue  # None: no sink
        self._feed = feed  # GET /events subscribers
        self._clock = clock

    def _session(self, session_id: str | None) -> str | None:
        if session_id is None:
            return None
        return session_id if self._include_id else session_digest(session_id)

    def _emit(self, kind: EventType, session_id: str | None, **fields: Any) -> None:
        if self._queue is None and not self._feed.active:
            return  # nobody to tell: no event built
        event = {
            "id": uuid.uuid4().hex,
            "type": kind,
            "at": iso(self._clock()),
            "session": self._session(session_id),
            "gateway": self._gateway,
            **fields,
        }
        if self._queue is not None:
            self._queue.put(event)
        if self._feed.active:
            # The feed is for operators watching: digests, as the admin listing shows no full ids either.
            if self._include_id:
                event = {
                    **event,
                    "session": _digest_or_none(session_id),
                    "previous": _digest_or_none(fields.get("previous")),
                }
            self._feed.publish(event)

    def started(self, session_id: str, reason: str, previous: str | None, replica: str) -> None:
        self._emit(
            "session.started", session_id, reason=reason, previous=self._session(previous), replica=replica
        )

    def ended(self, info: SessionInfo, reason: str, now: float) -> None:
        self._emit(
            "session.ended",
            info.id or None,
            reason=reason,
            previous=None,
            replica=info.replica,
            duration=round(max(0.0, now - info.created), 3),
            requests=info.requests,
        )

    def renamed(self, session_id: str, previous: str, replica: str) -> None:
        self._emit(
            "session.renamed", session_id, reason="rename", previous=self._session(previous), replica=replica
        )
