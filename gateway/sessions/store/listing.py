"""How the memory store pages its sessions: an index in the order they started, and cursors that hide ids.

A dict cannot be read from a position: its order is its insertion order, and skipping to the k-th entry
walks k entries. So the store keeps its sessions' (created, id) pairs sorted as well, in blocks of about a
thousand (the layout of sortedcontainers' SortedList, with the times in an `array` beside the ids): a new
session is almost always the latest, appended to the last (open) block; an end finds its block and place by
bisection, on floats in contiguous memory, and moves at most a block's pointers; a page bisects to the pair
after the cursor and reads on, O(log n + limit). Ordering by id alone cost as much again per start and end at
1M sessions (comparing strings scattered in memory). The index costs 16 bytes a session, and a session's start
and end, never a request. Measured, with the alternatives: README "Sessions on the admin port".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import Final

_LOAD: Final = 1000  # sessions per block: split past twice this; a closed one joins the next below half
_NONCE: Final = 8
_TAG: Final = 8

Key = tuple[float, str]  # (created, id)


class StartOrder:
    """Sessions sorted by (created, id): add and discard in O(log n), the ids after a key in O(log n + k)."""

    __slots__ = ("_ids", "_tail_ids", "_tails", "_times")

    def __init__(self, sessions: Iterable[Key] = ()) -> None:
        ordered = sorted(sessions)  # a state file's sessions come nearly sorted: Timsort is near O(n) then
        chunks = [ordered[i : i + _LOAD] for i in range(0, len(ordered), _LOAD)]
        self._times = [array("d", (created for created, _ in chunk)) for chunk in chunks]
        self._ids = [[session_id for _, session_id in chunk] for chunk in chunks]
        # The last pair of each block but the last (the open one, which new sessions join), as a float array
        # and a list: floats bisected in an array are what is cheap.
        self._tails = array("d", (times[-1] for times in self._times[:-1]))
        self._tail_ids = [ids[-1] for ids in self._ids[:-1]]

    def __len__(self) -> int:
        return sum(map(len, self._ids))

    def add(self, created: float, session_id: str) -> None:
        if not self._ids:
            self._times.append(array("d", (created,)))
            self._ids.append([session_id])
            return
        times, ids = self._times[-1], self._ids[-1]
        if created > times[-1] or (created == times[-1] and session_id > ids[-1]):
            # The latest session (nearly always): the open block grows, or is closed and a new one opens.
            if len(ids) < _LOAD:
                times.append(created)
                ids.append(session_id)
                if len(ids) == _LOAD:  # full: exactly sized copies free what appending over-allocated
                    self._times[-1], self._ids[-1] = times[:], ids[:]
                return
            self._tails.append(times[-1])
            self._tail_ids.append(ids[-1])
            self._times.append(array("d", (created,)))
            self._ids.append([session_id])
            return
        i = self._block(created, session_id)
        times, ids = self._times[i], self._ids[i]
        j = _place(times, ids, created, session_id)
        if times[j] == created and ids[j] == session_id:
            return
        times.insert(j, created)
        ids.insert(j, session_id)
        if len(ids) > 2 * _LOAD:
            self._split(i, _LOAD)

    def discard(self, created: float, session_id: str) -> None:
        blocks = self._ids
        if blocks and blocks[0][0] == session_id and self._times[0][0] == created:
            i = j = 0  # the oldest session: what the sweeper ends most
            times, ids = self._times[0], blocks[0]
        else:
            i = self._block(created, session_id)
            if i == len(blocks):
                return
            times, ids = self._times[i], blocks[i]
            j = _place(times, ids, created, session_id)
            if times[j] != created or ids[j] != session_id:
                return
        del times[j]
        del ids[j]
        if i == len(blocks) - 1:  # the open block keeps no tail, and may be small
            if not ids:
                del self._times[i], blocks[i]
                if self._tails:  # the block before is the open one now
                    self._tails.pop()
                    self._tail_ids.pop()
            return
        if len(ids) > _LOAD // 2:
            if j == len(ids):
                self._tails[i], self._tail_ids[i] = times[-1], ids[-1]
            return
        # A small block joins the next one (and is then open, if that one was), so blocks never thin out
        # into many tiny ones.
        self._times[i] += self._times.pop(i + 1)
        blocks[i] += blocks.pop(i + 1)
        del self._tails[i], self._tail_ids[i]  # the joined block ends where the next one did
        if len(blocks[i]) > 2 * _LOAD:
            self._split(i, len(blocks[i]) // 2)

    def after(self, key: Key | None, count: int) -> list[str]:
        """Up to `count` ids whose (created, id) is greater than `key` (None: from the first), in order."""
        blocks = self._ids
        i = j = 0
        if key is not None:
            created, session_id = key
            i = self._block(created, session_id)
            if i < len(blocks):
                times, ids = self._times[i], blocks[i]
                j = _place(times, ids, created, session_id)
                if times[j] == created and ids[j] == session_id:
                    j += 1
        found: list[str] = []
        while i < len(blocks) and len(found) < count:
            found += blocks[i][j : j + count - len(found)]
            i, j = i + 1, 0
        return found

    def _block(self, created: float, session_id: str) -> int:
        """The first block whose last pair is not before (created, id); len(blocks) when every one is."""
        tails = self._tails
        i = bisect_left(tails, created)
        if i < len(tails) and tails[i] == created:  # blocks ending at the same time: by id among them
            i = bisect_left(self._tail_ids, session_id, i, bisect_right(tails, created, i))
        if i == len(tails) and self._ids:  # past every closed block: the open one, unless past it too
            times, ids = self._times[-1], self._ids[-1]
            if created > times[-1] or (created == times[-1] and session_id > ids[-1]):
                return i + 1
        return i

    def _split(self, i: int, at: int) -> None:
        # Two new, exactly sized halves: a list or array cut in place keeps its allocation.
        times, ids = self._times[i], self._ids[i]
        self._times[i : i + 1] = times[:at], times[at:]
        self._ids[i : i + 1] = ids[:at], ids[at:]
        self._tails.insert(i, times[at - 1])  # the first half's end (when the open block split, it closed)
        self._tail_ids.insert(i, ids[at - 1])


def _place(times: array[float], ids: list[str], created: float, session_id: str) -> int:
    """Where (created, id) is, or would go, in a block that ends at or after it: by time, then id."""
    j = bisect_left(times, created)
    if times[j] == created and ids[j] < session_id:  # sessions started at the same time: by id among them
        j = bisect_left(ids, session_id, j, bisect_right(times, created, j))
    return j


def new_cursor_key() -> bytes:
    """A process's key for its cursors: a restart makes the old ones bad cursors."""
    return secrets.token_bytes(32)


def seal_cursor(key: bytes, last: Key) -> str:
    """The last (created, id) listed, encrypted and authenticated, URL-safe: a cursor names no session."""
    nonce = secrets.token_bytes(_NONCE)
    data = f"{last[0]!r}\n{last[1]}".encode()
    body = nonce + _xor(data, hashlib.shake_256(key + nonce).digest(len(data)))
    tag = hmac.new(key, body, "sha256").digest()[:_TAG]
    return base64.urlsafe_b64encode(body + tag).decode().rstrip("=")


def open_cursor(key: bytes, cursor: str) -> Key:
    """The (created, id) sealed in a cursor; ValueError for one this key did not seal."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not a cursor of this listing") from None
    body, tag = raw[:-_TAG], raw[-_TAG:]
    if len(body) < _NONCE or not hmac.compare_digest(tag, hmac.new(key, body, "sha256").digest()[:_TAG]):
        raise ValueError("not a cursor of this listing (or of an earlier run of the gateway)")
    nonce, sealed = body[:_NONCE], body[_NONCE:]
    created, _, session_id = (
        _xor(sealed, hashlib.shake_256(key + nonce).digest(len(sealed))).decode().partition("\n")
    )
    return float(created), session_id


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data) ^ int.from_bytes(stream)).to_bytes(len(data))
