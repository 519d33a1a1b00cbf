"""The Redis SessionStore, shared by gateway replicas: one script round trip per proxied request.

Keys and records are in redis_layout.py; the scripts in lua/ (each file says its KEYS and ARGV), the admin
listing in redis_listing.py.

Expiry is owned by the gateway: a replica ends a session only by removing its index entry inside the
same script, so exactly one replica counts each expiry. Key TTLs are a backstop for when no gateway runs.

On a Redis Cluster (cluster=True) every script's keys are one shard's, so one slot's: the cap is kept per shard
(max_sessions / shards, rounded up), a rename between two shards is two scripts (the new record first, then
the old id's tombstone), and the batches and the sweeper's pipelines go out per node (cluster.py). A script
that needs another key of the shard builds it from the same tag, f"{tag}:<name>", and takes it in KEYS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import secrets
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gateway.errors import StoreUnavailable
from gateway.sessions.store import (
    CapacityExceeded,
    Created,
    EndReason,
    Outcome,
    SessionInfo,
    SessionView,
    Swept,
    TombReason,
    Touch,
    id_digest,
)
from gateway.sessions.store.batch import ScriptBatcher, bounded
from gateway.sessions.store.cluster import NodePipelines
from gateway.sessions.store.connect import connect, disconnect
from gateway.sessions.store.redis_layout import (
    Keys,
    StreamEvents,
    open_successor,
    seal_successor,
    session_info,
)
from gateway.sessions.store.redis_listing import RedisListing
from gateway.sessions.store.redis_sweep import RedisSweep
from gateway.sessions.store.scripts import lua

# Seconds a key outlives its deadline, so the sweeper (not Redis) ends it while any gateway runs.
TTL_SLACK: Final = 60.0
_NO_EVENTS: Final = StreamEvents()
_KEYS_CACHED: Final = 16384  # sessions whose digest and keys are remembered (~520 B each, ~9 MB at most)

_TOUCH: Final = lua("touch", emits=True)
_CREATE: Final = lua("create", emits=True)
_SUCCEED: Final = lua("succeed")
_RELEASE: Final = lua("release")
_DISOWN: Final = lua("disown")
_END: Final = lua("end", emits=True)
_MARK_ENDED: Final = lua("mark_ended")
_RENAME: Final = lua("rename", emits=True)
_RENAME_TO: Final = lua("rename_to")
_RENAME_FROM: Final = lua("rename_from", emits=True)
_RENAME_SYNC: Final = lua("rename_sync")
_RENAME_UNDO: Final = lua("rename_undo")
_SET_TIMEOUT: Final = lua("set_timeout")


class RedisStore:
    """Sessions in Redis, shared by every gateway replica that points at it."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        absolute_timeout: float,
        max_sessions: int,
        on_full: str,
        tombstone_ttl: float,
        claim_ttl: float = 30.0,
        prefix: str = "sg",
        shards: int = 16,
        timeout: float = 0.5,
        max_connections: int = 64,
        sentinels: tuple[str, ...] = (),
        sentinel_master: str = "mymaster",
        cluster: bool = False,
        events: StreamEvents = _NO_EVENTS,
    ) -> None:
        self._absolute = absolute_timeout
        self._events = events
        self._ev = events.args()
        self._evict = on_full == "evict"
        self._tomb_ms = str(int(tombstone_ttl * 1000))
        self._prefix = prefix
        self._shards = shards
        self._indexes = tuple(f"{self._tag(shard)}:exp" for shard in range(shards))
        self.event_streams = tuple(f"{self._tag(shard)}:ev" for shard in range(shards))
        self.event_members = f"{prefix}:ev:replicas"  # the replicas delivering those (ops/event_streams.py)
        self._timeout = timeout
        self.client, self._sentinel = connect(
            url,
            timeout=timeout,
            max_connections=max_connections,
            sentinels=sentinels,
            sentinel_master=sentinel_master,
            cluster=cluster,
        )
        # On one Redis the cap is on the total of every shard's index, kept by the create script; on a Cluster,
        # where a script sees one shard, on each shard's (their sum is max_sessions rounded up to a multiple).
        self._max = max_sessions if not cluster else -(-max_sessions // shards)
        # A Cluster's batches and sweeps go out per node.
        self._nodes: NodePipelines | None = None
        batched: aioredis.Redis | NodePipelines
        if isinstance(self.client, RedisCluster):
            batched = self._nodes = NodePipelines(self.client, timeout)
        else:
            batched = self.client
        # A session's digest and keys, remembered for the sessions in use: every request of a conversation
        # needs the same ones (a SHA-256 and three f-strings, about 70 bytecodes a request).
        self._keys = functools.lru_cache(maxsize=_KEYS_CACHED)(self._session_keys)
        # A touch's claim is owned by (this store's token, the touch's number).
        self._touch_constants = (
            repr(absolute_timeout),
            repr(claim_ttl),
            self._tomb_ms,
            repr(TTL_SLACK),
            secrets.token_hex(8),
            self._ev,
        )
        self._touches = itertools.count()
        self._claim_ms = str(math.ceil(claim_ttl * 1000))
        # Every request touches and every new session creates: those two are batched, and so are the
        # disowning calls that a Redis latency spike makes for every touch it cut short.
        self._touch_batch = ScriptBatcher(
            batched, self.client.register_script(_TOUCH), timeout, on_lost=self._lost_touch
        )
        self._disown_batch = ScriptBatcher(batched, self.client.register_script(_DISOWN), timeout)
        self._disowning: set[asyncio.Task[None]] = set()
        self._create_batch = ScriptBatcher(batched, self.client.register_script(_CREATE), timeout)
        self._succeed = self.client.register_script(_SUCCEED)
        self._release = self.client.register_script(_RELEASE)
        self._end = self.client.register_script(_END)
        self._set_timeout = self.client.register_script(_SET_TIMEOUT)
        self._mark_ended = self.client.register_script(_MARK_ENDED)
        self._rename = self.client.register_script(_RENAME)
        self._rename_to = self.client.register_script(_RENAME_TO)
        self._rename_from = self.client.register_script(_RENAME_FROM)
        self._rename_sync = self.client.register_script(_RENAME_SYNC)
        self._rename_undo = self.client.register_script(_RENAME_UNDO)
        if self._nodes is not None:
            self._nodes.script(self._end)  # the sweeper's, sent per node
        reading = (self.client, self._nodes, self._indexes, self._tag, timeout)
        self._listing = RedisListing(*reading)
        end_args = (self._tomb_ms, repr(self._absolute), *self._ev)
        self._sweep = RedisSweep(reading, self._end, end_args)

    def _tag(self, shard: int) -> str:
        return f"{self._prefix}:{{{shard}}}"

    def _session_keys(self, session_id: str) -> Keys:
        """The digest, then the keys of the touch script: the record's and the disowned set, then the stream."""
        digest = id_digest(session_id)
        tag = self._tag(int(digest[:8], 16) % self._shards)
        return digest, (
            f"{tag}:s:{digest}",
            f"{tag}:t:{digest}",
            f"{tag}:exp",
            f"{tag}:v:{digest}",
            f"{tag}:ev",
        )

    def _named(self, session_id: str) -> str:
        """A session as the record keeps it for its events: the id, or '' when events name it by digest."""
        return session_id if self._events.include_id and self._events.on else ""

    async def _call(self, coro: Any) -> Any:
        return await bounded(coro, self._timeout)

    async def ping(self) -> None:
        await self._call(self.client.ping())

    async def touch(self, session_id: str, now: float) -> Touch:
        digest, keys = self._keys(session_id)
        absolute, claim_ttl, tomb_ms, slack, token, ev = self._touch_constants
        args = [repr(now), absolute, claim_ttl, tomb_ms, digest, slack, token, next(self._touches), *ev]
        result = await self._touch_batch(keys, args)
        kind = result[0]
        if kind == "live":
            return Touch(
                Outcome.LIVE,
                session=session_info(session_id, result[1:6]),
                idle_gap=max(0.0, now - float(result[6])),
            )
        if kind in ("expired", "lifetime"):
            return Touch(Outcome(kind), session=session_info(session_id, result[1:6]))
        if kind == "ended":
            successor = open_successor(result[2], session_id) if len(result) > 2 else None
            return Touch(Outcome.ENDED, ended_reason=result[1], successor=successor)
        return Touch(Outcome(kind))

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
        digest, keys = self._keys(session_id)
        args = [
            repr(now),
            repr(idle_timeout),
            replica,
            repr(self._absolute),
            digest,
            str(self._max),
            repr(TTL_SLACK),
            "evict" if self._evict else "reject",
            self._tomb_ms,
            self._named(session_id),
            reason,
            self._previous(previous),
            *self._ev,
        ]
        indexes = self._indexes if self._nodes is None else keys[2:3]  # the cap's: _CREATE
        result = await self._create_batch((*keys[:3], keys[4], *indexes), args)
        if result[0] == "full":
            raise CapacityExceeded
        if previous is not None:
            _, prev_keys = self._keys(previous)
            sealed = seal_successor(session_id, previous)
            await self._call(self._succeed(keys=[prev_keys[1]], args=[sealed, self._tomb_ms]))
        if result[0] == "exists":
            return Created(session_info(session_id, result[1:6]), created=False, active=int(result[6]))
        info = SessionInfo(session_id, now, now, idle_timeout, 1, replica)
        evicted = session_info("", result[2:7]) if len(result) > 2 else None
        return Created(info, created=True, evicted=evicted, active=int(result[1]))

    def _previous(self, previous: str | None) -> str:
        """The id a started event names as previous: as events name sessions, '' for none."""
        if previous is None or not self._events.on:
            return ""
        return previous if self._events.include_id else id_digest(previous)

    async def release(self, session_id: str) -> None:
        _, keys = self._keys(session_id)
        await self._call(self._release(keys=[keys[1]]))

    def _lost_touch(self, keys: Sequence[str], args: list[Any], result: list[str] | None) -> None:
        """A touch whose request did not get its reply: the client went away mid-request (result is what the
        touch did), or the reply came too late or not at all (None: it may have run, or may yet). A claim it
        took is nobody's: disowned, rather than left to make the conversation's next request wait it out."""
        if result is not None:
            kind = result[0]
            if kind not in ("expired", "lifetime", "missing") and not (kind == "ended" and len(result) <= 2):
                return  # took no claim
        task = asyncio.get_running_loop().create_task(self._disown(keys, f"{args[6]}:{args[7]}"))
        self._disowning.add(task)
        task.add_done_callback(self._disowning.discard)

    async def _disown(self, keys: Sequence[str], owner: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # the claim then times out by itself (claim_ttl)
            await self._disown_batch((keys[1], keys[3]), [owner, self._claim_ms])

    async def end(self, session_id: str, now: float, reason: EndReason) -> SessionInfo | None:
        digest, keys = self._keys(session_id)
        args = [digest, reason, repr(now), self._tomb_ms, "now", repr(self._absolute), *self._ev]
        result = await self._call(self._end(keys=(*keys[:3], keys[4]), args=args))
        return session_info(session_id, result[1:6]) if result else None

    async def mark_ended(self, session_id: str, now: float, reason: EndReason) -> None:
        _, keys = self._keys(session_id)
        await self._call(self._mark_ended(keys=keys[:2], args=[reason, self._tomb_ms]))

    async def rename(self, session_id: str, new_id: str, now: float) -> SessionInfo | None:
        digest, keys = self._keys(session_id)
        new_digest, new_keys = self._keys(new_id)
        sealed = seal_successor(new_id, session_id)
        if self._nodes is not None and keys[2] != new_keys[2]:
            return await self._rename_across(
                session_id, new_id, (digest, keys), (new_digest, new_keys), sealed, now
            )
        args = [
            digest,
            new_digest,
            sealed,
            self._tomb_ms,
            repr(TTL_SLACK),
            repr(now),
            repr(self._absolute),
            self._named(new_id),
            self._named(session_id),
            *self._ev,
        ]
        result = await self._call(self._rename(keys=[*keys[:3], *new_keys[:3], keys[4]], args=args))
        return session_info(new_id, result) if result else None

    async def _rename_across(
        self, old_id: str, new_id: str, old: Keys, new: Keys, sealed: str, now: float
    ) -> SessionInfo | None:
        """rename between two shards of a Cluster: the new record first, then the old id's tombstone, so a
        failure in between leaves the session live (under both ids, the new one idle until it expires)."""
        (digest, keys), (new_digest, new_keys) = old, new
        rec = await self._call(self.client.hmget(keys[0], ["c", "l", "i", "n", "r"]))
        if rec[0] is None:
            return None
        named = self._named(new_id)
        args = [*rec, new_digest, repr(now), repr(self._absolute), repr(TTL_SLACK), named]
        if not await self._call(self._rename_to(keys=new_keys[:3], args=args)):
            return None  # the new id is live
        names = [named or new_digest, self._named(old_id) or digest]
        args = [digest, sealed, self._tomb_ms, *names, *self._ev]
        last = await self._call(self._rename_from(keys=(*keys[:3], keys[4]), args=args))
        if not last:  # the old id ended meanwhile, and so does its copy
            await self._call(self._rename_undo(keys=[new_keys[0], new_keys[2]], args=[new_digest]))
            return None
        if last != rec:  # requests came in under the old id meanwhile
            added = int(last[3]) - int(rec[3])
            args = [last[1], last[2], added, new_digest, repr(self._absolute), repr(now), repr(TTL_SLACK)]
            synced = await self._call(self._rename_sync(keys=[new_keys[0], new_keys[2]], args=args))
            if synced:
                last = [*synced, last[4]]
        return session_info(new_id, last)

    async def set_idle_timeout(self, session_id: str, seconds: float) -> None:
        digest, keys = self._keys(session_id)
        args = [repr(seconds), repr(self._absolute), digest, repr(TTL_SLACK)]
        await self._call(self._set_timeout(keys=[keys[0], keys[2]], args=args))

    async def expire_due(self, now: float, limit: int) -> Swept:
        return await self._sweep.expire_due(now, limit)

    async def count(self) -> int:
        return await self._sweep.count()

    async def close(self) -> None:
        await self._touch_batch.close()
        await asyncio.gather(*self._disowning, return_exceptions=True)
        await self._disown_batch.close()
        await self._create_batch.close()
        if self._nodes is not None:
            await self._nodes.close()
        await disconnect(self.client, self._sentinel)

    async def page(self, cursor: str | None, limit: int) -> tuple[list[SessionView], str | None]:
        """Live sessions by (shard, deadline, digest), `limit` at a time (redis_listing.py)."""
        return await self._listing.page(cursor, limit)

    async def info(self, session_id: str) -> SessionInfo | None:
        return await self._listing.info(session_id)


__all__ = ["RedisStore", "StreamEvents", "TombReason", "open_successor", "seal_successor"]
