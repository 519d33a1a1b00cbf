"""The expiry sweeper, and the store's health as requests and sweeps find it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from gateway.config import SessionConfig
from gateway.errors import StoreUnavailable
from gateway.ops.metrics import Metrics
from gateway.sessions.session_ledger import SessionLedger

log = logging.getLogger("gateway")

# Event-loop time one sweep batch may take before yielding (the stall target is 5 ms).
_BATCH_SECONDS: Final = 0.001


class StoreHealth:
    """Whether the store answered the last request or sweep; logged once per change, not per failure."""

    def __init__(self, config: SessionConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.healthy = True

    def down(self, op: str, exc: StoreUnavailable) -> None:
        self.metrics.store_errors[op].inc()
        if self.healthy:
            self.healthy = False
            self.metrics.store_up.set(0)
            log.warning(
                "session store unavailable (%s; store_failure = %s)", exc.message, self.config.store_failure
            )

    def up(self) -> None:
        if not self.healthy:
            self.healthy = True
            self.metrics.store_up.set(1)
            log.info("session store available again")


class Sweeper:
    """Ends every session past a timeout, each session.sweep_interval, in batches that keep the loop responsive."""

    def __init__(self, ledger: SessionLedger, health: StoreHealth, clock: Callable[[], float]) -> None:
        self.config = ledger.config
        self.store = ledger.store
        self.metrics = ledger.metrics
        self.ledger = ledger
        self.health = health
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._batch = min(64, self.config.sweep_batch)  # grows while batches stay under _BATCH_SECONDS

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="session-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            # The flag ends the loop even when the cancel is lost: redis-py sends through asyncio.wait_for,
            # which on Python 3.11 swallows a cancel that lands as the send completes (bpo-42130).
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                self.health.down("sweep", exc)
            except Exception:  # a bug must not kill the sweeper; one line with the traceback
                log.exception("expiry sweep failed")
            else:
                self.health.up()

    async def sweep(self) -> int:
        """End every session past a timeout, in bounded batches that yield to the event loop."""
        started = time.perf_counter()
        now = self.clock()
        count = 0
        while True:
            batch_started = time.perf_counter()
            swept = await self.store.expire_due(now, self._batch)
            observed = time.perf_counter()
            for ended in swept.ended:
                self.ledger.observe_end(ended.session, ended.reason, now)
            count += len(swept.ended)
            # Keep every batch near _BATCH_SECONDS of event-loop time, whatever a session costs to end here.
            # A shared store's expire_due is mostly waiting on the network, when the loop serves others.
            spent = time.perf_counter() - (observed if self.store.shared else batch_started)
            if spent > _BATCH_SECONDS and self._batch > 16:
                self._batch //= 2
            elif spent < _BATCH_SECONDS / 2 and self._batch < self.config.sweep_batch:
                self._batch = min(self._batch * 2, self.config.sweep_batch)
            if not swept.more:
                break
            await asyncio.sleep(0)
        await self.ledger.refresh_active(sweeping=True)
        self.metrics.sweep_duration.observe(time.perf_counter() - started)
        self.metrics.sweep_last.set(time.time())
        return count
