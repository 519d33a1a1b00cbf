"""`GET /events` on the admin port: the lifecycle events as Server-Sent Events, for operators watching live.

Each subscriber has a bounded buffer; one that cannot keep up is cut (its stream ends with an `event: cut`
comment) rather than slowing anything: publishing never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Final

from aiohttp import web

BUFFER: Final = 1000  # events per subscriber not yet written
HEARTBEAT: Final = 15.0  # seconds between keep-alive comments (proxies cut idle streams)
_CUT: Final = {"type": "cut"}


class Feed:
    """Fan-out of events to the subscribers of this process."""

    def __init__(self, buffer: int = BUFFER) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._buffer = buffer

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)  # too slow: cut, never waited for
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(_CUT)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._buffer)
        self._subscribers.add(queue)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b": session-gateway lifecycle events\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is _CUT:
                    await response.write(b"event: cut\ndata: {}\n\n")
                    break
                data = json.dumps(event, separators=(",", ":"))
                await response.write(f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n".encode())
        except ConnectionError:
            pass  # the operator went away
        finally:
            self._subscribers.discard(queue)
        return response
