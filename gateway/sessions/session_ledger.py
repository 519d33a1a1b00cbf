"""Starting and ending sessions in the store, counted once: the session metrics and the lifecycle events."""

from __future__ import annotations

from gateway.config import SessionConfig
from gateway.errors import SessionCapacity
from gateway.ops.events import Emitter
from gateway.ops.metrics import Metrics
from gateway.sessions.store import CapacityExceeded, EndReason, SessionInfo, SessionStore
from gateway.sessions.turn import StartReason
from gateway.upstream.upstreams import Replica, Upstreams


class SessionLedger:
    """Every session start and end goes through here, whoever decided it (a request, the sweeper, an admin)."""

    def __init__(
        self,
        config: SessionConfig,
        store: SessionStore,
        metrics: Metrics,
        upstreams: Upstreams,
        events: Emitter | None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.upstreams = upstreams
        # Lifecycle events produced here (memory store); a shared store's scripts produce their own.
        self.events = events
        self._active_max = 0
        metrics.sessions_limit.set(config.max_sessions)
        metrics.store_shared.set(1 if store.shared else 0)
        metrics.idle_timeout.set(config.idle_timeout)

    def observe_end(self, info: SessionInfo, reason: EndReason, now: float) -> None:
        """Count a session the store has already ended."""
        self.metrics.ended[reason].inc()
        self.metrics.session_duration.observe(max(0.0, now - info.created))
        self.metrics.session_requests.observe(info.requests)
        if self.events is not None:
            self.events.ended(info, reason, now)

    async def refresh_active(self, *, sweeping: bool = False) -> None:
        """Set the active-sessions gauges from the store's count."""
        if self.store.shared and not sweeping:
            return  # a shared count costs a round trip: the sweeper refreshes it every sweep_interval
        active = await self.store.count()
        self.metrics.sessions_active.set(active)
        if active > self._active_max:
            self._active_max = active
            self.metrics.sessions_active_max.set(active)

    async def start(
        self, session_id: str, reason: StartReason, now: float, previous: str | None, replica: Replica | None
    ) -> bool:
        """Create the session on `replica` (else the least busy); False: another request created it first."""
        replica = replica or self.upstreams.choose()
        try:
            created = await self.store.create(
                session_id,
                now,
                idle_timeout=self.config.idle_timeout,
                replica=replica.name,
                previous=previous,
                reason=reason,  # a shared store's script writes the started event itself
            )
        except CapacityExceeded:
            self.metrics.sessions_rejected.inc()
            raise SessionCapacity("The gateway holds as many sessions as it may; try again later.") from None
        if created.evicted is not None:
            self.observe_end(created.evicted, "evicted", now)
        if created.created:
            self.metrics.started[reason].inc()
            self.upstreams.pinned(replica)
            if self.events is not None:
                self.events.started(session_id, reason, previous, replica.name)
        await self.refresh_active()
        return created.created

    async def end(self, session_id: str, reason: EndReason, now: float) -> None:
        """End the session if it is live."""
        info = await self.store.end(session_id, now, reason)
        if info is not None:
            self.observe_end(info, reason, now)
            await self.refresh_active()
