"""The in-memory SessionStore: a dict of records, a lazy min-heap of deadlines, bounded tombstones."""

from __future__ import annotations

import heapq
from collections import deque

from gateway.store import (
    CapacityExceeded,
    Created,
    Ended,
    EndReason,
    Outcome,
    SessionInfo,
    Swept,
    TombReason,
    Touch,
)


class _Record:
    __slots__ = ("created", "due", "idle_timeout", "last_seen", "replica", "requests")

    def __init__(self, created: float, idle_timeout: float, replica: str) -> None:
        self.due = 0.0  # the deadline of this record's one valid heap entry
        self.created = created
        self.last_seen = created
        self.idle_timeout = idle_timeout
        self.requests = 0
        self.replica = replica


class MemoryStore:
    """One process's sessions. Every method runs without awaiting, so each is atomic on the event loop.

    Expiry uses one valid heap entry per session, `(deadline when pushed, id)`, valid while it equals the
    record's `due`. A touch does not push: the sweeper re-pushes an entry whose session moved its
    deadline. So a sweep costs O(log n) per session that expires or was touched since its entry was
    pushed, never a scan of all sessions.
    """

    shared = False

    def __init__(
        self,
        *,
        absolute_timeout: float,
        max_sessions: int,
        on_full: str,
        tombstone_ttl: float,
        max_tombstones: int,
        claim_ttl: float = 30.0,
    ) -> None:
        self._absolute = absolute_timeout
        self._claim_ttl = claim_ttl
        self._claims: dict[str, float] = {}  # dead or unknown id -> when a request claimed it
        self._max = max_sessions
        self._evict = on_full == "evict"
        self._tomb_ttl = tombstone_ttl
        self._max_tombs = max_tombstones
        self._sessions: dict[str, _Record] = {}
        self._heap: list[tuple[float, str]] = []
        # id -> (reason, successor); the deque holds (forget_at, id) in insertion order = expiry order.
        self._tombs: dict[str, tuple[TombReason, str | None]] = {}
        self._tomb_order: deque[tuple[float, str]] = deque()

    def _deadline(self, rec: _Record) -> float:
        return min(rec.last_seen + rec.idle_timeout, rec.created + self._absolute)

    @staticmethod
    def _info(session_id: str, rec: _Record) -> SessionInfo:
        return SessionInfo(session_id, rec.created, rec.last_seen, rec.idle_timeout, rec.requests, rec.replica)

    def _tombstone(self, session_id: str, reason: TombReason, now: float) -> None:
        self._forget_tombstones(now)
        self._tombs[session_id] = (reason, None)
        self._tomb_order.append((now + self._tomb_ttl, session_id))
        while len(self._tombs) > self._max_tombs:
            _, old = self._tomb_order.popleft()
            self._tombs.pop(old, None)

    def _forget_tombstones(self, now: float) -> None:
        order = self._tomb_order
        while order and order[0][0] <= now:
            _, old = order.popleft()
            self._tombs.pop(old, None)

    def _remove(self, session_id: str, reason: EndReason, now: float) -> SessionInfo:
        rec = self._sessions.pop(session_id)
        self._tombstone(session_id, reason, now)
        return self._info(session_id, rec)

    def _claim(self, session_id: str, now: float) -> bool:
        """Claim a dead or unknown id; False when another request holds a fresh claim."""
        claimed = self._claims.get(session_id)
        if claimed is not None and now - claimed < self._claim_ttl:
            return False
        self._claims[session_id] = now
        return True

    async def touch(self, session_id: str, now: float) -> Touch:
        rec = self._sessions.get(session_id)
        if rec is None:
            self._forget_tombstones(now)
            tomb = self._tombs.get(session_id)
            if tomb is not None and tomb[1] is not None:
                return Touch(Outcome.ENDED, ended_reason=tomb[0], successor=tomb[1])
            if not self._claim(session_id, now):
                return Touch(Outcome.PENDING)
            if tomb is None:
                return Touch(Outcome.MISSING)
            return Touch(Outcome.ENDED, ended_reason=tomb[0])
        if now >= rec.created + self._absolute:
            self._claims[session_id] = now
            return Touch(Outcome.LIFETIME, session=self._remove(session_id, "lifetime", now))
        if now >= rec.last_seen + rec.idle_timeout:
            self._claims[session_id] = now
            return Touch(Outcome.EXPIRED, session=self._remove(session_id, "idle", now))
        gap = now - rec.last_seen if rec.requests else None
        rec.last_seen = now
        rec.requests += 1
        return Touch(Outcome.LIVE, session=self._info(session_id, rec), idle_gap=gap)

    async def create(
        self, session_id: str, now: float, *, idle_timeout: float, replica: str, previous: str | None = None
    ) -> Created:
        self._claims.pop(session_id, None)
        if previous is not None:
            self._claims.pop(previous, None)
        rec = self._sessions.get(session_id)
        if rec is not None:
            return Created(self._info(session_id, rec), created=False, active=len(self._sessions))
        evicted = None
        if len(self._sessions) >= self._max:
            if not self._evict:
                raise CapacityExceeded
            evicted = self._evict_one(now)
        rec = self._sessions[session_id] = _Record(now, idle_timeout, replica)
        rec.requests = 1
        self._push(session_id, rec)
        if previous is not None:
            if previous in self._tombs:
                self._tombs[previous] = (self._tombs[previous][0], session_id)
            else:
                self._tombstone(previous, "unknown", now)
                self._tombs[previous] = ("unknown", session_id)
        return Created(self._info(session_id, rec), created=True, evicted=evicted, active=len(self._sessions))

    def _push(self, session_id: str, rec: _Record) -> None:
        rec.due = self._deadline(rec)
        heapq.heappush(self._heap, (rec.due, session_id))

    def _evict_one(self, now: float) -> SessionInfo | None:
        """End the session nearest its deadline (for equal timeouts, the least recently active)."""
        heap = self._heap
        while heap:
            due, session_id = heapq.heappop(heap)
            rec = self._sessions.get(session_id)
            if rec is None or rec.due != due:
                continue
            if self._deadline(rec) != due:
                self._push(session_id, rec)
                continue
            return self._remove(session_id, "evicted", now)
        return None

    async def release(self, session_id: str) -> None:
        self._claims.pop(session_id, None)

    async def end(self, session_id: str, now: float, reason: EndReason) -> SessionInfo | None:
        if session_id not in self._sessions:
            return None
        return self._remove(session_id, reason, now)

    async def set_idle_timeout(self, session_id: str, seconds: float) -> None:
        rec = self._sessions.get(session_id)
        if rec is None:
            return
        shorter = seconds < rec.idle_timeout
        rec.idle_timeout = seconds
        if shorter:
            # The heap entry may now be later than the real deadline: push an earlier one (the old one
            # turns invalid because it no longer equals rec.due).
            self._push(session_id, rec)

    async def expire_due(self, now: float, limit: int) -> Swept:
        heap = self._heap
        ended: list[Ended] = []
        work = 0  # every pop counts, re-pushes too, so one batch is bounded however the heap looks
        while heap and heap[0][0] <= now and work < limit:
            work += 1
            due, session_id = heapq.heappop(heap)
            rec = self._sessions.get(session_id)
            if rec is None or rec.due != due:
                continue  # ended another way, or superseded by an earlier entry
            if self._deadline(rec) > now:
                self._push(session_id, rec)
                continue
            reason: EndReason = "lifetime" if now >= rec.created + self._absolute else "idle"
            ended.append(Ended(self._remove(session_id, reason, now), reason))
        self._forget_tombstones(now)
        return Swept(ended, more=bool(heap) and heap[0][0] <= now)

    async def count(self) -> int:
        return len(self._sessions)

    async def close(self) -> None:
        self._sessions.clear()
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._sessions)
