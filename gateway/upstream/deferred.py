"""Deferred answers: a slow bot's answer kept for its pick-up, after the client got an interim one.

A token is 128 bits from `secrets`, single-use, bound to the session the request carried (when it had one), and
kept `deferred.keep` seconds. The DeferredStore Protocol has an in-process backend here and a Redis one in
gateway/sessions/store/redis_deferred.py (several gateway replicas: a pick-up may reach another one).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

RUNNING: Final = "running"  # take(): the answer is not there yet


class Answer(NamedTuple):
    """A bot's answer as the client gets it: status, reason, headers after the gateway's processing, body."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class DeferredStore(Protocol):
    """Pending answers by token. `session` is the id the token is bound to (None: unbound)."""

    async def open(self, token: str, session: str | None, keep: float) -> bool:
        """Record a pending answer; False when `deferred.max_pending` are pending already."""
        ...

    async def finish(self, token: str, answer: Answer, keep: float) -> None:
        """Store the answer (the bot's, or the gateway's error for it) and wake its pick-ups."""
        ...

    async def drop(self, token: str) -> None:
        """Forget a token whose exchange was cancelled (shutdown): its pick-ups hear 404."""
        ...

    async def take(self, token: str, session: str | None, wait: float) -> Answer | str | None:
        """The answer, once (removed); RUNNING when it is not there after `wait` seconds; None when the token is
        unknown, expired, already taken, or bound to another session."""
        ...

    async def close(self) -> None: ...


def new_token() -> str:
    return secrets.token_urlsafe(16)  # 128 bits, URL-safe: it rides in a path


class _Entry:
    __slots__ = ("answer", "done", "expires", "session")

    def __init__(self, session: str | None, expires: float) -> None:
        self.session = session
        self.expires = expires
        self.answer: Answer | None = None
        self.done = asyncio.Event()


class MemoryDeferred:
    """One process's pending answers; expired ones are dropped as new ones open (bounded by max_pending)."""

    def __init__(
        self,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
        on_expired: Callable[[], None] = lambda: None,
    ) -> None:
        self._entries: dict[str, _Entry] = {}  # insertion order = expiry order for one `keep`
        self._max = max_pending
        self._clock = clock
        self._on_expired = on_expired  # an answer (or a bot still working) nobody picked up within `keep`

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[token]
            self._on_expired()

    async def open(self, token: str, session: str | None, keep: float) -> bool:
        self._expire()
        if len(self._entries) >= self._max:
            return False
        self._entries[token] = _Entry(session, self._clock() + keep)
        return True

    async def finish(self, token: str, answer: Answer, keep: float) -> None:
        entry = self._entries.get(token)
        if entry is None:
            return  # expired while the bot worked
        entry.answer = answer
        entry.expires = self._clock() + keep
        self._entries[token] = self._entries.pop(token)  # keep the order by expiry
        entry.done.set()

    async def drop(self, token: str) -> None:
        entry = self._entries.pop(token, None)
        if entry is not None:
            entry.done.set()  # waiting pick-ups find it gone: 404

    async def take(self, token: str, session: str | None, wait: float) -> Answer | str | None:
        self._expire()
        entry = self._entries.get(token)
        if entry is None or (entry.session is not None and entry.session != session):
            return None
        if entry.answer is None:
            try:
                await asyncio.wait_for(entry.done.wait(), wait)
            except TimeoutError:
                return RUNNING
        if self._entries.get(token) is not entry or entry.answer is None:
            return None  # another pick-up took it while this one waited
        del self._entries[token]
        return entry.answer

    async def close(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
