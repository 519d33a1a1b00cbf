"""Delivering lifecycle events: a signed webhook with retries, or a Redis Stream, fed from the in-process queue.

At least once: a batch that failed (network error, timeout, 5xx, 429) is sent again after an exponential
backoff with full jitter, until its oldest event is `events.max_age` old, when it is dropped and counted. A 4xx
other than 429 means the receiver refuses it: dropped at once, one log line. Receivers deduplicate by `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import aiohttp

from gateway.config import EventsConfig
from gateway.ops.events import EventQueue, encode, stop
from gateway.ops.metrics import Metrics

log = logging.getLogger("gateway")

SIGNATURE_HEADER: Final = "X-Gateway-Signature-256"
_BACKOFF_FIRST: Final = 0.5  # seconds before the first retry
_BACKOFF_MAX: Final = 60.0
Verdict = Literal["delivered", "retry", "dropped"]


def sign(secret: str, body: bytes) -> str:
    """GitHub's X-Hub-Signature-256 scheme: `sha256=` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def age(event: dict[str, Any], now: float) -> float:
    return now - datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()


def backoff(failures: int, sink: Sink) -> float:
    """Seconds before the next try after `failures` in a row: exponential with full jitter (replicas do not
    retry in step), or what the receiver's Retry-After asked for."""
    ceiling = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (failures - 1))
    return max(getattr(sink, "retry_after", 0.0), random.uniform(0, ceiling))


def settle(metrics: Metrics, events: list[dict[str, Any]], verdict: Verdict, max_age: float) -> list[bool]:
    """Count what a send did to each event; whether each is done with (delivered, or dropped) or to be sent
    again (a retry, until it is max_age old)."""
    now = time.time()
    if verdict != "retry":
        for event in events:
            metrics.events.labels(type=event["type"], outcome=verdict).inc()
            if verdict == "delivered":
                metrics.events_lag.observe(max(0.0, age(event, now)))
        return [True] * len(events)
    expired = [age(event, now) >= max_age for event in events]
    for event, old in zip(events, expired, strict=True):
        metrics.events.labels(type=event["type"], outcome="dropped" if old else "retried").inc()
    if any(expired):
        log.warning("dropped %d events older than events.max_age after failed deliveries", sum(expired))
    return expired


class Sink(Protocol):
    async def send(self, batch: list[dict[str, Any]]) -> Verdict: ...

    async def close(self) -> None: ...


class WebhookSink:
    """POST `{"events": [...]}` to events.url, signed when events.secret is set."""

    def __init__(self, config: EventsConfig) -> None:
        self._config = config
        self._http: aiohttp.ClientSession | None = None
        self.retry_after = 0.0  # seconds a 429's or 503's Retry-After asked for

    async def send(self, batch: list[dict[str, Any]]) -> Verdict:
        if self._http is None:
            timeout = aiohttp.ClientTimeout(total=self._config.timeout)
            self._http = aiohttp.ClientSession(
                timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        body = encode(batch)
        headers = {"Content-Type": "application/json"}
        if self._config.secret:
            headers[SIGNATURE_HEADER] = sign(self._config.secret, body)
        self.retry_after = 0.0
        try:
            async with self._http.post(self._config.url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("event webhook failed (%s); will retry", type(exc).__name__)
            return "retry"
        if 200 <= status < 300:
            return "delivered"
        if status == 429 or status >= 500:
            if retry_after.isdigit():
                self.retry_after = min(float(retry_after), _BACKOFF_MAX)
            return "retry"
        log.warning("event webhook refused a batch of %d events with %d; dropped", len(batch), status)
        return "dropped"

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


class RedisStreamSink:
    """XADD each event to events.stream on session.redis_url, trimmed by age (events.retention)."""

    def __init__(self, config: EventsConfig, redis_url: str, timeout: float) -> None:
        import redis.asyncio as aioredis  # only with this sink

        self._config = config
        self._client = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self.retry_after = 0.0

    async def send(self, batch: list[dict[str, Any]]) -> Verdict:
        from redis.exceptions import RedisError

        floor = f"{int((time.time() - self._config.retention) * 1000)}-0"
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for event in batch:
                    fields = {
                        k: json.dumps(v) if not isinstance(v, str) else v
                        for k, v in event.items()
                        if v is not None
                    }
                    pipe.xadd(self._config.stream, fields, minid=floor, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.info("event stream write failed (%s); will retry", type(exc).__name__)
            return "retry"
        return "delivered"

    async def close(self) -> None:
        await self._client.aclose()


class Delivery:
    """Drains the in-process queue into a sink: batches of events.batch, at least every flush_interval."""

    def __init__(self, config: EventsConfig, queue: EventQueue, sink: Sink, metrics: Metrics) -> None:
        self._config = config
        self._queue = queue
        self._sink = sink
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Future[Verdict] | None = None  # the batch being sent
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-delivery")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopping:
            await self._queue.ready.wait()
            # A batch goes when it is full, or flush_interval after its first event (checked every 50 ms).
            deadline = loop.time() + self._config.flush_interval
            while len(self._queue) < self._config.batch and (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(left, 0.05))
            try:
                # Shielded: stopping lets a batch being sent get its answer (close() waits for it).
                flushing = self._flushing = asyncio.ensure_future(self.flush_once())
                verdict = await asyncio.shield(flushing)
            except Exception:  # a bug of ours must not end delivery: one line, then retry as for a failure
                log.exception("event delivery failed")
                verdict = "retry"
            failures = failures + 1 if verdict == "retry" else 0
            if failures:
                await asyncio.sleep(backoff(failures, self._sink))

    async def flush_once(self) -> Verdict:
        """Send one batch; count what happened to its events."""
        batch = self._queue.take(self._config.batch)
        if not batch:
            return "delivered"  # nothing to send: a POST of no events would be a receiver's puzzle
        self._metrics.events_queue.set(len(self._queue))
        try:
            verdict = await self._sink.send(batch)
        except asyncio.CancelledError:  # cut short by shutdown's deadline: back in the queue, counted there
            self._queue.put_back(batch)
            raise
        settled = settle(self._metrics, batch, verdict, self._config.max_age)
        self._queue.put_back([event for event, done in zip(batch, settled, strict=True) if not done])
        self._metrics.events_queue.set(len(self._queue))
        return verdict

    def _count(self, events: list[dict[str, Any]], outcome: str) -> None:
        for event in events:
            self._metrics.events.labels(type=event["type"], outcome=outcome).inc()

    async def close(self, timeout: float) -> None:
        """Shutdown: flush what is queued within `timeout` (what is left then is lost, and counted)."""
        self._stopping = True
        await stop(self._task)
        deadline = time.monotonic() + timeout
        if self._flushing is not None and not self._flushing.done():
            with contextlib.suppress(Exception):  # a timeout cancels it: its batch goes back to the queue
                await asyncio.wait_for(self._flushing, max(0.01, deadline - time.monotonic()))
        while len(self._queue) and time.monotonic() < deadline:
            try:
                verdict = await asyncio.wait_for(self.flush_once(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if verdict == "retry":
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        lost = self._queue.take(len(self._queue))
        if lost:
            self._count(lost, "dropped")
            log.warning("shutdown: %d lifecycle events could not be delivered within the timeout", len(lost))
        await self._sink.close()
