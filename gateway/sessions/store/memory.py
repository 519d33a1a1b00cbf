"""The in-memory SessionStore: a dict of records, a lazy min-heap of deadlines, bounded tombstones."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Final, NamedTuple

from gateway.sessions.store import (
    CapacityExceeded,
    Created,
    Ended,
    EndReason,
    Outcome,
    SessionInfo,
    SessionView,
    Swept,
    TombReason,
    Touch,
)
from gateway.sessions.store.listing import StartOrder, new_cursor_key, open_cursor, seal_cursor

# A record is a plain tuple (created, last_seen, idle_timeout, requests, replica, due), replaced on every
# touch. Why not a __slots__ object: CPython's cyclic GC stops tracking a tuple that holds only floats, ints
# and strings, so a million live sessions add nothing to its passes; a million objects made every full
# collection pause the event loop for tens of milliseconds (measured in bench/sessions_bench.py).
# `due` is the deadline of the record's one valid heap entry.
Record = tuple[float, float, float, int, str, float]
CREATED: Final = 0
LAST_SEEN: Final = 1
IDLE: Final = 2
REQUESTS: Final = 3
REPLICA: Final = 4
DUE: Final = 5
Tomb = tuple[TombReason, str | None, float]  # (reason, successor, forget_at)


class Snapshot(NamedTuple):
    """A memory store's sessions and tombstones as plain data (claims are transient: never kept)."""

    sessions: dict[str, Record]  # a record's `due` is recomputed by restore()
    tombstones: dict[str, Tomb]


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
        self._sessions: dict[str, Record] = {}
        self._heap: list[tuple[float, str]] = []
        self._order = StartOrder()  # the live sessions again, by (created, id): page() reads from a cursor
        self._cursor_key = new_cursor_key()
        # id -> (reason, successor, forget_at); the deque holds (forget_at, id) in insertion order = expiry
        # order. An id tombstoned again (or given a successor) gets a later entry; its earlier one is stale:
        # it no longer matches the tombstone's forget_at, and forgets nothing.
        self._tombs: dict[str, tuple[TombReason, str | None, float]] = {}
        self._tomb_order: deque[tuple[float, str]] = deque()

    def _deadline(self, rec: Record) -> float:
        return min(rec[LAST_SEEN] + rec[IDLE], rec[CREATED] + self._absolute)

    @staticmethod
    def _info(session_id: str, rec: Record) -> SessionInfo:
        return SessionInfo(session_id, rec[CREATED], rec[LAST_SEEN], rec[IDLE], rec[REQUESTS], rec[REPLICA])

    def _tombstone(
        self, session_id: str, reason: TombReason, now: float, successor: str | None = None
    ) -> None:
        """Remember why the id ended (and its successor) for tombstone_ttl from now."""
        self._forget_tombstones(now)
        forget_at = now + self._tomb_ttl
        self._tombs[session_id] = (reason, successor, forget_at)
        self._tomb_order.append((forget_at, session_id))
        while len(self._tombs) > self._max_tombs:
            self._forget(*self._tomb_order.popleft())

    def _forget_tombstones(self, now: float) -> None:
        order = self._tomb_order
        while order and order[0][0] <= now:
            self._forget(*order.popleft())

    def _forget(self, forget_at: float, session_id: str) -> None:
        tomb = self._tombs.get(session_id)
        if tomb is not None and tomb[2] == forget_at:  # else a later end or successor renewed it
            del self._tombs[session_id]

    def _remove(self, session_id: str, reason: EndReason, now: float) -> SessionInfo:
        rec = self._sessions.pop(session_id)
        self._order.discard(rec[CREATED], session_id)
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
        if now >= rec[CREATED] + self._absolute:
            self._claims[session_id] = now
            return Touch(Outcome.LIFETIME, session=self._remove(session_id, "lifetime", now))
        if now >= rec[LAST_SEEN] + rec[IDLE]:
            self._claims[session_id] = now
            return Touch(Outcome.EXPIRED, session=self._remove(session_id, "idle", now))
        created, last_seen, idle, requests, replica, due = rec
        if now < last_seen:  # the clock stepped back (time.time() can): last_seen never moves back
            now = last_seen
        self._sessions[session_id] = (created, now, idle, requests + 1, replica, due)
        info = SessionInfo(session_id, created, now, idle, requests + 1, replica)
        return Touch(Outcome.LIVE, session=info, idle_gap=now - last_seen)

    async def create(
        self,
        session_id: str,
        now: float,
        *,
        idle_timeout: float,
        replica: str,
        previous: str | None = None,
        reason: str = "first",
    ) -> Created:
        self._claims.pop(session_id, None)
        if previous is not None:
            self._claims.pop(previous, None)
        rec = self._sessions.get(session_id)
        if rec is not None:
            self._succeed(previous, session_id, now)  # as the Redis store: the existing session follows
            return Created(self._info(session_id, rec), created=False, active=len(self._sessions))
        evicted = None
        if len(self._sessions) >= self._max:
            if not self._evict:
                raise CapacityExceeded
            evicted = self._evict_one(now)
        rec = self._push(session_id, (now, now, idle_timeout, 1, replica, 0.0))
        self._order.add(now, session_id)
        self._succeed(previous, session_id, now)
        return Created(self._info(session_id, rec), created=True, evicted=evicted, active=len(self._sessions))

    def _succeed(self, previous: str | None, successor: str, now: float) -> None:
        """Name the successor of a dead (or unknown) id, remembered for another tombstone_ttl: other tabs
        still holding the old id follow it (the Redis store's SUCCEED re-arms the TTL too)."""
        if previous is not None:
            tomb = self._tombs.get(previous)
            self._tombstone(previous, tomb[0] if tomb is not None else "unknown", now, successor)

    def _push(self, session_id: str, rec: Record) -> Record:
        """Store the record with a fresh heap entry at its current deadline."""
        due = self._deadline(rec)
        rec = self._sessions[session_id] = (
            rec[CREATED],
            rec[LAST_SEEN],
            rec[IDLE],
            rec[REQUESTS],
            rec[REPLICA],
            due,
        )
        heapq.heappush(self._heap, (due, session_id))
        return rec

    def _evict_one(self, now: float) -> SessionInfo | None:
        """End the session nearest its deadline (for equal timeouts, the least recently active)."""
        heap = self._heap
        while heap:
            due, session_id = heapq.heappop(heap)
            rec = self._sessions.get(session_id)
            if rec is None or rec[DUE] != due:
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

    async def mark_ended(self, session_id: str, now: float, reason: EndReason) -> None:
        self._claims.pop(session_id, None)
        self._forget_tombstones(now)
        if session_id not in self._sessions and session_id not in self._tombs:
            self._tombstone(session_id, reason, now)

    async def rename(self, session_id: str, new_id: str, now: float) -> SessionInfo | None:
        rec = self._sessions.get(session_id)
        if rec is None or new_id in self._sessions:
            return None
        del self._sessions[session_id]  # its heap entry turns stale: no record under that id
        self._order.discard(rec[CREATED], session_id)
        self._claims.pop(new_id, None)
        rec = self._push(new_id, rec)
        self._order.add(rec[CREATED], new_id)
        self._tombstone(session_id, "renamed", now, successor=new_id)
        return self._info(new_id, rec)

    async def set_idle_timeout(self, session_id: str, seconds: float) -> None:
        rec = self._sessions.get(session_id)
        if rec is None:
            return
        created, last_seen, _, requests, replica, due = rec
        rec = self._sessions[session_id] = (created, last_seen, seconds, requests, replica, due)
        if self._deadline(rec) < rec[DUE]:
            # The heap entry is now later than the real deadline: push an earlier one (the old one turns
            # invalid because it no longer equals the record's due).
            self._push(session_id, rec)

    async def expire_due(self, now: float, limit: int) -> Swept:
        heap = self._heap
        ended: list[Ended] = []
        work = 0  # every pop counts, re-pushes too, so one batch is bounded however the heap looks
        while heap and heap[0][0] <= now and work < limit:
            work += 1
            due, session_id = heapq.heappop(heap)
            rec = self._sessions.get(session_id)
            if rec is None or rec[DUE] != due:
                continue  # ended another way, or superseded by an earlier entry
            if self._deadline(rec) > now:
                self._push(session_id, rec)
                continue
            reason: EndReason = "lifetime" if now >= rec[CREATED] + self._absolute else "idle"
            ended.append(Ended(self._remove(session_id, reason, now), reason))
        self._forget_tombstones(now)
        return Swept(ended, more=bool(heap) and heap[0][0] <= now)

    def snapshot(self) -> Snapshot:
        """The live sessions and the tombstones; shallow copies suffice, as records are immutable tuples."""
        return Snapshot(dict(self._sessions), dict(self._tombs))

    async def restore(self, snapshot: Snapshot, now: float) -> list[Ended]:
        """Fill this empty store from a snapshot (taking its dicts): sessions past a timeout end as expire_due
        ends them, then those nearest expiry past max_sessions are evicted; the ends are returned for the
        metrics. Forgotten tombstones are dropped, and none outlives tombstone_ttl from now."""
        if self._sessions or self._tombs:
            raise RuntimeError("restore() needs an empty store")
        # The latest tombstones, at most max_tombstones, in forget order.
        latest = now + self._tomb_ttl
        tombs = sorted(
            (min(forget_at, latest), sid, reason, successor)
            for sid, (reason, successor, forget_at) in snapshot.tombstones.items()
            if forget_at > now
        )
        for forget_at, sid, reason, successor in tombs[-self._max_tombs :]:
            self._tombs[sid] = (reason, successor, forget_at)
            self._tomb_order.append((forget_at, sid))
        sessions, absolute = snapshot.sessions, self._absolute
        for sid, (created, last_seen, idle, requests, replica, _) in sessions.items():
            due = min(last_seen + idle, created + absolute)
            # Replacing values keeps the dict's size, so it is safe while iterating, and frees each old tuple.
            sessions[sid] = (created, last_seen, idle, requests, replica, due)
        self._sessions = sessions
        self._order = StartOrder((rec[CREATED], sid) for sid, rec in sessions.items())
        self._heap = [(rec[DUE], sid) for sid, rec in sessions.items()]
        heapq.heapify(self._heap)
        ended = (await self.expire_due(now, len(self._heap))).ended
        while len(sessions) > self._max:
            evicted = self._evict_one(now)
            assert evicted is not None  # the heap holds an entry for every record
            ended.append(Ended(evicted, "evicted"))
        return ended

    async def count(self) -> int:
        return len(self._sessions)

    async def page(self, cursor: str | None, limit: int) -> tuple[list[SessionView], str | None]:
        """Live sessions, oldest first; the cursor is the last one listed, sealed (listing.py)."""
        after = None if cursor is None else open_cursor(self._cursor_key, cursor)
        ids = self._order.after(after, limit + 1)  # one more than the page: whether there is a next one
        views = []
        for session_id in ids[:limit]:
            created, last_seen, _, requests, replica, _ = rec = self._sessions[session_id]
            label = session_id[:6] + "…"  # as the logs shorten it (sessions.short_id)
            views.append(SessionView(label, created, last_seen, self._deadline(rec), requests, replica))
        if len(ids) <= limit:
            return views, None
        last = ids[limit - 1]
        return views, seal_cursor(self._cursor_key, (self._sessions[last][CREATED], last))

    async def info(self, session_id: str) -> SessionInfo | None:
        rec = self._sessions.get(session_id)
        return None if rec is None else self._info(session_id, rec)

    async def close(self) -> None:
        self._sessions.clear()
        self._heap.clear()
        self._order = StartOrder()

    def __len__(self) -> int:
        return len(self._sessions)
