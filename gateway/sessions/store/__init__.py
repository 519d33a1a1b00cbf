"""The SessionStore Protocol: every decision about a session's life is made atomically inside the store.

Shaped so a networked store needs one round trip per proxied request: `touch` reads, decides expiry and
records the request at once.

Claims make "each new session is signalled exactly once" hold across gateway replicas: a `touch` that
finds a dead or unknown id claims it, so exactly one request (the claimant) starts its successor; a
concurrent touch of the same id answers PENDING until the claimant's `create(..., previous=id)` records
the successor (or `release(id)` gives up, or the claim times out).
"""

from __future__ import annotations

import enum
import hashlib
from typing import Literal, NamedTuple, Protocol

EndReason = Literal["idle", "lifetime", "client", "bot", "upstream", "evicted", "admin"]
# A tombstone also remembers ids that were never sessions but got a successor ("unknown"), and ids the bot
# replaced with a new one for the same conversation ("renamed": its successor continues it).
TombReason = Literal[
    "idle", "lifetime", "client", "bot", "upstream", "evicted", "admin", "unknown", "renamed"
]
END_REASONS: tuple[EndReason, ...] = ("idle", "lifetime", "client", "bot", "upstream", "evicted", "admin")


def id_digest(session_id: str) -> str:
    """A session id's digest: the Redis store's keys, and the id events carry with events.include_id off."""
    return hashlib.sha256(b"session-gateway/id\x00" + session_id.encode()).hexdigest()[:32]


class Outcome(enum.Enum):
    LIVE = "live"  # continued; the request is recorded
    EXPIRED = "expired"  # was past its idle timeout: ended by this call
    LIFETIME = "lifetime"  # was past its absolute timeout: ended by this call
    ENDED = "ended"  # already gone: a tombstone remembers why (reason in Touch.ended_reason)
    MISSING = "missing"  # never seen, or forgotten
    PENDING = "pending"  # another request holds the claim on this id: ask again shortly


# Value objects are NamedTuples: built on every request and for every expiry, they must be cheap to make
# (a frozen dataclass sets each field through object.__setattr__, several times slower).


class SessionInfo(NamedTuple):
    """A snapshot of a session record."""

    id: str
    created: float  # clock seconds
    last_seen: float
    idle_timeout: float  # seconds
    requests: int
    replica: str


class SessionView(NamedTuple):
    """A live session as an operator's listing shows it: never its full id."""

    short_id: str  # the id's first characters (memory store), or "#" and its digest's (Redis store: no ids)
    created: float  # clock seconds
    last_seen: float
    deadline: float  # when it expires without another request: the idle or absolute timeout, the earlier
    requests: int
    replica: str


class Touch(NamedTuple):
    outcome: Outcome
    session: SessionInfo | None = None  # LIVE: after the touch; EXPIRED/LIFETIME: as it ended
    idle_gap: float | None = None  # LIVE: seconds since the previous request of this session
    ended_reason: TombReason | None = None  # ENDED: why the tombstoned session ended
    successor: str | None = None  # EXPIRED/LIFETIME/ENDED: the session that replaced it, if any


class Created(NamedTuple):
    session: SessionInfo
    created: bool  # False: the id already existed and was continued
    evicted: SessionInfo | None = None  # made room at the cap (on_full = "evict")
    active: int = 0


class Ended(NamedTuple):
    session: SessionInfo  # from a shared store, `id` is empty: it keeps only digests of ids
    reason: EndReason


class Swept(NamedTuple):
    ended: list[Ended]
    more: bool  # due sessions remain: call again (after yielding to the event loop)


class CapacityExceeded(Exception):
    """The store is full and on_full = "reject"."""


class SessionStore(Protocol):
    """Async session storage. `now` always comes from the caller's clock."""

    shared: bool  # several gateway processes see it: counts are refreshed by the sweeper, not per request

    async def touch(self, session_id: str, now: float) -> Touch:
        """Continue a live session (recording the request), or end it if past a timeout; claim a dead id."""
        ...

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
        """Start a session (or continue it, if it exists), releasing claims on it and on `previous`,
        whose tombstone then names it as successor. `reason` is why it starts, for the store's own events."""
        ...

    async def release(self, session_id: str) -> None:
        """Give up the claim on a dead or unknown id without starting a successor."""
        ...

    async def end(self, session_id: str, now: float, reason: EndReason) -> SessionInfo | None:
        """End a live session and tombstone it; None when it was not live."""
        ...

    async def mark_ended(self, session_id: str, now: float, reason: EndReason) -> None:
        """Tombstone an id that is not live here (one a client ended while the gateway did not know it),
        releasing its claim; an id that is live, or already has a tombstone, keeps what it has."""
        ...

    async def rename(self, session_id: str, new_id: str, now: float) -> SessionInfo | None:
        """Move a live session to a new id (the bot rotated it), keeping its deadlines, pin and counters;
        the old id's tombstone names the new one as successor. None: the old id is not live, or the new one
        already exists."""
        ...

    async def set_idle_timeout(self, session_id: str, seconds: float) -> None: ...

    async def expire_due(self, now: float, limit: int) -> Swept:
        """End sessions past a timeout (reason idle or lifetime), doing at most `limit` units of work."""
        ...

    async def count(self) -> int: ...

    async def page(self, cursor: str | None, limit: int) -> tuple[list[SessionView], str | None]:
        """Up to `limit` live sessions after `cursor` (None: the first page), and the next page's cursor (None:
        no more), in O(limit) however many sessions live. Read-only. A listing is no snapshot: sessions that
        start, end or move meanwhile may or may not be in it. ValueError: a cursor this store did not issue."""
        ...

    async def info(self, session_id: str) -> SessionInfo | None:
        """The live session's record, read-only (a lookup is no request); None when it is not live."""
        ...

    async def close(self) -> None: ...
