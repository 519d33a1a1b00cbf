"""The Redis SessionStore, shared by gateway replicas: one script round trip per proxied request.

Layout, per shard `<tag>` = `<prefix>:{<n>}` (`{<n>}` is a hash tag: one shard's keys share one Cluster slot):
    <tag>:s:<h>   HASH c (created) l (last seen) i (idle timeout) n (requests) r (replica)
    <tag>:t:<h>   HASH r (why it ended) s (successor, sealed) p (claim time) o (claim owner); the tombstone
                  and the claim
    <tag>:v:<h>   SET   owners of touches disowned before they ran (their requests gave up), for claim_ttl
    <tag>:exp     ZSET  h -> deadline: the expiry index every replica sweeps
`h` is a hash of the session id: a dump of the keyspace leaks no live session. A successor id is sealed
with a keystream derived from the id it replaces, which only its holder knows.

Expiry is owned by the gateway: a replica ends a session only by removing its index entry inside the
same script, so exactly one replica counts each expiry. Key TTLs are a backstop for when no gateway runs.

On a Redis Cluster (cluster=True) every script's keys are one shard's, so one slot's: the cap is kept per shard
(max_sessions / shards, rounded up), a rename between two shards is two scripts (the new record first, then
the old id's tombstone), and the batches and the sweeper's pipelines go out per node (cluster.py). A script
that needs another key of the shard builds it from the same tag, f"{tag}:<name>", and takes it in KEYS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import itertools
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.cluster import RedisCluster

from gateway.errors import StoreUnavailable
from gateway.store import (
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
from gateway.store.batch import ScriptBatcher, bounded
from gateway.store.cluster import Command, NodePipelines
from gateway.store.connect import connect, disconnect

# Seconds a key outlives its deadline, so the sweeper (not Redis) ends it while any gateway runs.
TTL_SLACK: Final = 60.0
_KEYS_CACHED: Final = 16384  # sessions whose digest and keys are remembered (~520 B each, ~9 MB at most)

# Prepended to the scripts that start or end sessions: the lifecycle event goes into the shard's stream in the
# same script as the change, so it is written exactly when the change is (issue 20). The last three ARGV are
# always: events on ("1") or off, the streams' retention in seconds, and the gateway instance. Trimmed by the
# server's clock (the gateway's may be a test's); the entry id's time is the event's `at`.
_EMIT: Final = """
local ev_on, ev_keep, ev_gateway = ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
local function emit(stream, ...)
  if ev_on ~= '1' then return end
  local t = redis.call('TIME')
  local floor = string.format('%d', (tonumber(t[1]) - tonumber(ev_keep)) * 1000)
  redis.call('XADD', stream, 'MINID', '~', floor, '*', 'gateway', ev_gateway, ...)
end
local function ended(stream, who, reason, rec, now)
  local duration = string.format('%.3f', math.max(0, now - tonumber(rec[1])))
  emit(stream, 'type', 'session.ended', 'session', who, 'reason', reason, 'replica', rec[5],
    'duration', duration, 'requests', rec[4])
end
"""

_TOUCH: Final = (
    _EMIT
    + """
local now = tonumber(ARGV[1])
local absolute = tonumber(ARGV[2])
local claim_ttl = tonumber(ARGV[3])
-- A claim is a field of the tombstone: the tombstone must live at least as long as the claim.
local claim_ms = math.ceil(claim_ttl * 1000)
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r', 'e')
if rec[1] then
  local c, l, i, n = tonumber(rec[1]), tonumber(rec[2]), tonumber(rec[3]), tonumber(rec[4])
  local outcome = false
  if now >= c + absolute then outcome = 'lifetime' elseif now >= l + i then outcome = 'expired' end
  if outcome then
    redis.call('DEL', KEYS[1], KEYS[2])
    redis.call('ZREM', KEYS[3], ARGV[5])
    redis.call('HSET', KEYS[2], 'r', outcome == 'lifetime' and 'lifetime' or 'idle')
    local owner = ARGV[7] .. ':' .. ARGV[8]
    if redis.call('SISMEMBER', KEYS[4], owner) == 0 then redis.call('HSET', KEYS[2], 'p', ARGV[1], 'o', owner) end
    redis.call('PEXPIRE', KEYS[2], math.max(tonumber(ARGV[4]), claim_ms))
    ended(KEYS[5], rec[6] or ARGV[5], outcome == 'lifetime' and 'lifetime' or 'idle', rec, now)
    return {outcome, rec[1], rec[2], rec[3], rec[4], rec[5]}
  end
  n = n + 1
  -- A clock behind the last request's (a step back, another replica's) never moves last_seen back.
  local seen, seen_text = l, rec[2]
  if now > l then seen, seen_text = now, ARGV[1] end
  redis.call('HSET', KEYS[1], 'l', seen_text, 'n', n)
  local deadline = math.min(seen + i, c + absolute)
  redis.call('ZADD', KEYS[3], deadline, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], math.ceil((deadline - now + tonumber(ARGV[6])) * 1000))
  return {'live', rec[1], seen_text, rec[3], tostring(n), rec[5], rec[2]}
end
local tomb = redis.call('HMGET', KEYS[2], 'r', 's', 'p')
if tomb[1] and tomb[2] then return {'ended', tomb[1], tomb[2]} end
if tomb[3] and now - tonumber(tomb[3]) < claim_ttl then return {'pending'} end
-- The claim is owned by this call (store token, call number), so only its own request gives it up.
local owner = ARGV[7] .. ':' .. ARGV[8]
-- Its request already gave up (_DISOWN overtook it): claim nothing; nobody reads the answer.
if redis.call('SISMEMBER', KEYS[4], owner) == 1 then return {'pending'} end
redis.call('HSET', KEYS[2], 'p', ARGV[1], 'o', owner)
if tomb[1] then
  if redis.call('PTTL', KEYS[2]) < claim_ms then redis.call('PEXPIRE', KEYS[2], claim_ms) end
  return {'ended', tomb[1]}
end
redis.call('PEXPIRE', KEYS[2], claim_ms)
return {'missing'}
"""
)

_CREATE: Final = (
    _EMIT
    + """
-- KEYS[4] the shard's event stream; KEYS[5..]: the indexes the cap is on. On one Redis every shard's (their
-- total, so these keys span hash slots); on a Cluster the session's own shard's alone, and ARGV[6] is that
-- shard's share of the cap. ARGV[10..12]: the event's session (the id; '' for its digest), reason, previous.
local function total()
  local n = 0
  for k = 5, #KEYS do n = n + redis.call('ZCARD', KEYS[k]) end
  return n
end
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r')
if rec[1] then
  redis.call('HDEL', KEYS[2], 'p', 'o')
  return {'exists', rec[1], rec[2], rec[3], rec[4], rec[5], tostring(total())}
end
local cap = tonumber(ARGV[6])
local evicted = false
if total() >= cap then
  if ARGV[8] ~= 'evict' then return {'full'} end
  -- End the session nearest its deadline here, atomically: creates racing at the cap each end their own
  -- victim. Index entries whose key lapsed (no record) are dropped on the way.
  for _ = 1, 8 do
    local victim, index, due = nil, nil, nil
    for k = 5, #KEYS do
      local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
      if first[1] and (due == nil or tonumber(first[2]) < due) then
        victim, index, due = first[1], KEYS[k], tonumber(first[2])
      end
    end
    if not victim then break end
    redis.call('ZREM', index, victim)
    local tag = string.sub(index, 1, -5)
    local vrec = redis.call('HMGET', tag .. ':s:' .. victim, 'c', 'l', 'i', 'n', 'r', 'e')
    if vrec[1] then
      redis.call('DEL', tag .. ':s:' .. victim, tag .. ':t:' .. victim)
      redis.call('HSET', tag .. ':t:' .. victim, 'r', 'evicted')
      redis.call('PEXPIRE', tag .. ':t:' .. victim, ARGV[9])
      ended(tag .. ':ev', vrec[6] or victim, 'evicted', vrec, tonumber(ARGV[1]))
      evicted = vrec
      break
    end
  end
  if total() >= cap then return {'full'} end
end
local now = tonumber(ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'l', ARGV[1], 'i', ARGV[2], 'n', 1, 'r', ARGV[3])
-- The id itself is kept only for events that name it: the sweeper, which knows digests, ends it by name.
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[10]) end
local deadline = math.min(now + tonumber(ARGV[2]), now + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[3], deadline, ARGV[5])
redis.call('PEXPIRE', KEYS[1], math.ceil((deadline - now + tonumber(ARGV[7])) * 1000))
if ARGV[12] ~= '' then
  emit(KEYS[4], 'type', 'session.started', 'session', ARGV[10] ~= '' and ARGV[10] or ARGV[5], 'reason', ARGV[11],
    'replica', ARGV[3], 'previous', ARGV[12])
else
  emit(KEYS[4], 'type', 'session.started', 'session', ARGV[10] ~= '' and ARGV[10] or ARGV[5], 'reason', ARGV[11],
    'replica', ARGV[3])
end
local active = tostring(total())
if evicted then return {'created', active, evicted[1], evicted[2], evicted[3], evicted[4], evicted[5]} end
return {'created', active}
"""
)

_SUCCEED: Final = """
if redis.call('HEXISTS', KEYS[1], 'r') == 0 then redis.call('HSET', KEYS[1], 'r', 'unknown') end
redis.call('HSET', KEYS[1], 's', ARGV[1])
redis.call('HDEL', KEYS[1], 'p', 'o')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# A hash whose last field goes is deleted: an unknown id's claim leaves nothing behind.
_RELEASE: Final = """
return redis.call('HDEL', KEYS[1], 'p', 'o')
"""

# A touch whose request did not get the reply (it left, or the reply came after redis_timeout) may have
# claimed the id, or may still be on its way to the server and claim it when it runs. Its claim is nobody's:
# released by its owner, never another request's; if it is not there, the owner is remembered (for
# claim_ttl: a claim is dated by its request, so a later one is stale at once) and the touch claims nothing.
# KEYS: the tombstone, the disowned set.
_DISOWN: Final = """
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then return redis.call('HDEL', KEYS[1], 'p', 'o') end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
"""

# END ends a live session for a reason; SWEEP ends it only if it is due. Both remove the index entry in
# the same script, so two replicas never both end one session.
_END: Final = (
    _EMIT
    + """
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r', 'e')
if not rec[1] then
  -- No session: an index entry left is one whose key lapsed by its TTL while no gateway ran.
  redis.call('ZREM', KEYS[3], ARGV[1])
  return false
end
local now = tonumber(ARGV[3])
local reason = ARGV[2]
if ARGV[5] == 'due' then
  if redis.call('ZSCORE', KEYS[3], ARGV[1]) == false then return false end
  local c, l, i = tonumber(rec[1]), tonumber(rec[2]), tonumber(rec[3])
  local deadline = math.min(l + i, c + tonumber(ARGV[6]))
  if deadline > now then
    redis.call('ZADD', KEYS[3], deadline, ARGV[1])
    return false
  end
  if now >= c + tonumber(ARGV[6]) then reason = 'lifetime' else reason = 'idle' end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[2], 'r', reason)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
ended(KEYS[4], rec[6] or ARGV[1], reason, rec, now)
return {reason, rec[1], rec[2], rec[3], rec[4], rec[5]}
"""
)

# KEYS: the id's record and tombstone. An id that is live, or already has a tombstone, keeps it.
_MARK_ENDED: Final = """
redis.call('HDEL', KEYS[2], 'p', 'o')
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'r', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: the old id's record, tombstone and index, then the new id's. The two ids usually live on different
# shards: on a Cluster this runs only when they share one; otherwise _RENAME_TO, _RENAME_FROM and then
# _RENAME_SYNC or _RENAME_UNDO, each on one shard.
_RENAME: Final = (
    _EMIT
    + """
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r')
if not rec[1] or redis.call('EXISTS', KEYS[4]) == 1 then return false end
local now = tonumber(ARGV[6])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[5])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], 'c', rec[1], 'l', rec[2], 'i', rec[3], 'n', rec[4], 'r', rec[5])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[4], 'e', ARGV[8]) end
local deadline = math.min(tonumber(rec[2]) + tonumber(rec[3]), tonumber(rec[1]) + tonumber(ARGV[7]))
redis.call('ZADD', KEYS[6], deadline, ARGV[2])
redis.call('PEXPIRE', KEYS[4], math.max(1, math.ceil((deadline - now + tonumber(ARGV[5])) * 1000)))
redis.call('HSET', KEYS[2], 'r', 'renamed', 's', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
-- The event names both ids as events do (ARGV[8], ARGV[9]: the ids, or '' for their digests).
emit(KEYS[7], 'type', 'session.renamed', 'session', ARGV[8] ~= '' and ARGV[8] or ARGV[2],
  'previous', ARGV[9] ~= '' and ARGV[9] or ARGV[1], 'reason', 'rename', 'replica', rec[5])
return rec
"""
)

# A rename between two shards of a Cluster, first: the new id's record, a copy of the old one's (ARGV[1..5]),
# unless the new id is live. Until _RENAME_FROM the session is live under both ids, never under none.
# KEYS: the new id's record, tombstone and index.
_RENAME_TO: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local c, l, i = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'l', ARGV[2], 'i', ARGV[3], 'n', ARGV[4], 'r', ARGV[5])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[10]) end
local deadline = math.min(l + i, c + tonumber(ARGV[8]))
redis.call('ZADD', KEYS[3], deadline, ARGV[6])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((deadline - tonumber(ARGV[7]) + tonumber(ARGV[9])) * 1000)))
return 1
"""

# Then the old id, if still live: its record goes, its tombstone names the successor; its record as it was
# then (requests may have come in under the old id meanwhile). KEYS: the old id's record, tombstone and index.
_RENAME_FROM: Final = (
    _EMIT
    + """
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r')
if not rec[1] then return false end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[2], 'r', 'renamed', 's', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
-- The one step of the four that knows the rename happened: its event, in the old id's shard's stream.
emit(KEYS[4], 'type', 'session.renamed', 'session', ARGV[4], 'previous', ARGV[5], 'reason', 'rename',
  'replica', rec[5])
return rec
"""
)

# Requests that came in under the old id between the two: added to the new record (ARGV[3] of them, the
# latest at ARGV[1], with the idle timeout ARGV[2]). KEYS: the new id's record and index.
_RENAME_SYNC: Final = """
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'n')
if not rec[1] then return false end
local c, seen, seen_text = tonumber(rec[1]), tonumber(rec[2]), rec[2]
if tonumber(ARGV[1]) > seen then seen, seen_text = tonumber(ARGV[1]), ARGV[1] end
local n = tonumber(rec[3]) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'l', seen_text, 'i', ARGV[2], 'n', n)
local deadline = math.min(seen + tonumber(ARGV[2]), c + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[2], deadline, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((deadline - tonumber(ARGV[6]) + tonumber(ARGV[7])) * 1000)))
return {rec[1], seen_text, ARGV[2], tostring(n)}
"""

# Or the old id ended meanwhile (expired, ended by a client or another replica): the copy goes too.
# KEYS: the new id's record and index.
_RENAME_UNDO: Final = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

_SET_TIMEOUT: Final = """
local rec = redis.call('HMGET', KEYS[1], 'c', 'l')
if not rec[1] then return 0 end
redis.call('HSET', KEYS[1], 'i', ARGV[1])
local deadline = math.min(tonumber(rec[2]) + tonumber(ARGV[1]), tonumber(rec[1]) + tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], deadline, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((deadline - tonumber(rec[2]) + tonumber(ARGV[4])) * 1000))
return 1
"""


def _record_keys(tag: str, digest: str) -> tuple[str, str, str, str]:
    """A session's record, its tombstone, its shard's expiry index and its shard's event stream."""
    return f"{tag}:s:{digest}", f"{tag}:t:{digest}", f"{tag}:exp", f"{tag}:ev"


def _digest(session_id: str) -> str:
    return hashlib.sha256(b"session-gateway/id\x00" + session_id.encode()).hexdigest()[:32]


def _keystream(previous: str, length: int) -> bytes:
    return hashlib.shake_256(b"session-gateway/successor\x00" + previous.encode()).digest(length)


def seal_successor(successor: str, previous: str) -> str:
    """The successor id, readable only with the id it replaced."""
    data = successor.encode()
    return bytes(a ^ b for a, b in zip(data, _keystream(previous, len(data)), strict=True)).hex()


def open_successor(sealed: str, previous: str) -> str:
    data = bytes.fromhex(sealed)
    return bytes(a ^ b for a, b in zip(data, _keystream(previous, len(data)), strict=True)).decode(
        errors="replace"
    )


_Keys = tuple[str, tuple[str, str, str, str, str]]  # a session's digest and keys (RedisStore._session_keys)


@dataclass(frozen=True, slots=True)
class StreamEvents:
    """Lifecycle events the store's scripts write to each shard's stream, `<prefix>:{<n>}:ev` (issue 20)."""

    on: bool = False
    include_id: bool = True  # false: events name sessions by digest, and records keep no id
    retention: float = 86400.0  # seconds an entry stays in its stream
    gateway: str = ""  # the instance named in events

    def args(self) -> tuple[str, str, str]:
        """The three ARGV every emitting script ends with (_EMIT)."""
        return ("1" if self.on else "", repr(self.retention), self.gateway)


def _info(session_id: str, rec: list[str]) -> SessionInfo:
    created, last_seen, idle, requests, replica = rec[:5]
    return SessionInfo(session_id, float(created), float(last_seen), float(idle), int(requests), replica)


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
        events: StreamEvents = StreamEvents(),
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

    def _tag(self, shard: int) -> str:
        return f"{self._prefix}:{{{shard}}}"

    def _session_keys(self, session_id: str) -> _Keys:
        """The digest, then the keys of the touch script: the record's and the disowned set, then the stream."""
        digest = _digest(session_id)
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
                session=_info(session_id, result[1:6]),
                idle_gap=max(0.0, now - float(result[6])),
            )
        if kind in ("expired", "lifetime"):
            return Touch(Outcome(kind), session=_info(session_id, result[1:6]))
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
            return Created(_info(session_id, result[1:6]), created=False, active=int(result[6]))
        info = SessionInfo(session_id, now, now, idle_timeout, 1, replica)
        evicted = _info("", result[2:7]) if len(result) > 2 else None
        return Created(info, created=True, evicted=evicted, active=int(result[1]))

    def _previous(self, previous: str | None) -> str:
        """The id a started event names as previous: as events name sessions, '' for none."""
        if previous is None or not self._events.on:
            return ""
        return previous if self._events.include_id else _digest(previous)

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
        return _info(session_id, result[1:6]) if result else None

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
        result = await self._call(self._rename(keys=[*keys[:3], *new_keys[:3], new_keys[4]], args=args))
        return _info(new_id, result) if result else None

    async def _rename_across(
        self, old_id: str, new_id: str, old: _Keys, new: _Keys, sealed: str, now: float
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
        return _info(new_id, last)

    async def set_idle_timeout(self, session_id: str, seconds: float) -> None:
        digest, keys = self._keys(session_id)
        args = [repr(seconds), repr(self._absolute), digest, repr(TTL_SLACK)]
        await self._call(self._set_timeout(keys=[keys[0], keys[2]], args=args))

    async def expire_due(self, now: float, limit: int) -> Swept:
        """Every shard's due entries in one pipelined read, then one pipelined claim per entry."""
        per_shard = max(1, limit // self._shards)
        if self._nodes is not None:
            return await self._expire_on_nodes(self._nodes, now, per_shard)
        assert isinstance(self.client, aioredis.Redis)
        async with self.client.pipeline(transaction=False) as pipe:
            for index in self._indexes:
                pipe.zrangebyscore(index, "-inf", repr(now), start=0, num=per_shard)
            due: list[list[str]] = await self._call(pipe.execute())
        more = any(len(members) >= per_shard for members in due)
        if not any(due):
            return Swept([], more=False)
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, members in enumerate(due):
                tag = self._tag(shard)
                for digest in members:
                    args = [digest, "idle", repr(now), self._tomb_ms, "due", repr(self._absolute), *self._ev]
                    await self._end(keys=_record_keys(tag, digest), args=args, client=pipe)
            results = await self._call(pipe.execute())
        ended = [Ended(_info("", r[1:6]), r[0]) for r in results if r]
        return Swept(ended, more=more)

    async def _expire_on_nodes(self, nodes: NodePipelines, now: float, per_shard: int) -> Swept:
        """expire_due on a Cluster: the same two steps, each one pipeline per node, the nodes at once."""
        reads: list[Command] = [
            (index, ("ZRANGEBYSCORE", index, "-inf", repr(now), "LIMIT", 0, per_shard))
            for index in self._indexes
        ]
        due: list[list[str]] = _replies(await nodes.run(reads))
        more = any(len(members) >= per_shard for members in due)
        sha, tail = self._end.sha, ("idle", repr(now), self._tomb_ms, "due", repr(self._absolute), *self._ev)
        calls: list[Command] = []
        for shard, members in enumerate(due):
            tag = self._tag(shard)
            for digest in members:
                keys = _record_keys(tag, digest)
                calls.append((keys[0], ("EVALSHA", sha, 4, *keys, digest, *tail)))
        results = await nodes.run(calls)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and len(failed) == len(results):
            _replies(failed)
        # A node that failed now keeps its due entries for the next sweep; the others' ends are counted.
        ended = [Ended(_info("", r[1:6]), r[0]) for r in results if r and not isinstance(r, BaseException)]
        return Swept(ended, more=more)

    async def count(self) -> int:
        if self._nodes is not None:
            return sum(
                _replies(await self._nodes.run([(index, ("ZCARD", index)) for index in self._indexes]))
            )
        async with self.client.pipeline(transaction=False) as pipe:
            for index in self._indexes:
                pipe.zcard(index)
            counts = await self._call(pipe.execute())
        return int(sum(counts))

    async def close(self) -> None:
        await self._touch_batch.close()
        await asyncio.gather(*self._disowning, return_exceptions=True)
        await self._disown_batch.close()
        await self._create_batch.close()
        if self._nodes is not None:
            await self._nodes.close()
        await disconnect(self.client, self._sentinel)

    async def page(self, cursor: str | None, limit: int) -> tuple[list[SessionView], str | None]:
        """Live sessions by (shard, deadline, digest): each shard's expiry index read in order with ZRANGE
        BYSCORE LIMIT (O(log n + limit)), then the page's records in one pipeline. The store keeps no ids,
        so a view's short id is "#" and its digest's first characters; the cursor is the last entry read."""
        shard, after = self._open_cursor(cursor)
        want = limit + 1  # one more than the page: whether there is a next one
        found: list[tuple[int, str, float]] = []  # (shard, digest, deadline)
        while shard < self._shards and len(found) < want:
            low = "-inf" if after is None else repr(after[0])
            offset = 0
            while len(found) < want:
                count = want - len(found)
                entries: list[tuple[str, float]] = await self._call(
                    self.client.zrange(
                        self._indexes[shard],
                        low,
                        "+inf",
                        byscore=True,
                        offset=offset,
                        num=count,
                        withscores=True,
                    )
                )
                offset += len(entries)
                # The cursor's deadline is read again: its entry, and any before it with the same one, are skipped.
                found += [(shard, d, s) for d, s in entries if after is None or (s, d) > after]
                if len(entries) < count:
                    break
            shard, after = shard + 1, None
        listed = found[:limit]
        records = await self._hmgets([f"{self._tag(index)}:s:{digest}" for index, digest, _ in listed])
        views = [
            SessionView(f"#{digest[:12]}", float(c), float(seen), deadline, int(n), r or "")
            for (_, digest, deadline), (c, seen, n, r) in zip(listed, records, strict=True)
            if c is not None and seen is not None and n is not None  # ended since its index entry was read
        ]
        if len(found) <= limit:
            return views, None
        index, digest, deadline = listed[-1]
        return views, base64.urlsafe_b64encode(f"{index}:{deadline!r}:{digest}".encode()).decode().rstrip("=")

    def _open_cursor(self, cursor: str | None) -> tuple[int, tuple[float, str] | None]:
        """(shard, (deadline, digest) of the last entry listed); ValueError for a cursor page() did not make."""
        if cursor is None:
            return 0, None
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            shard, deadline, digest = raw.decode().split(":")
            index, score = int(shard), float(deadline)
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            raise ValueError("not a cursor of this listing") from None
        if not 0 <= index < self._shards or not math.isfinite(score) or len(digest) != 32:
            raise ValueError("not a cursor of this listing")
        if digest.strip("0123456789abcdef"):
            raise ValueError("not a cursor of this listing")
        return index, (score, digest)

    async def _hmgets(self, keys: list[str]) -> list[list[str | None]]:
        """Each record's created, last seen, requests and replica, in one round trip: packed by hiredis on one
        pooled connection (redis-py's Pipeline packed 1,000 HMGETs in Python, ~30 ms), or per node."""
        fields: list[Any] = ["c", "l", "n", "r"]
        if self._nodes is not None:
            return _replies(await self._nodes.run([(key, ("HMGET", key, *fields)) for key in keys]))
        if not keys:
            return []
        payload = b"".join([pack_command(("HMGET", key, *fields)) for key in keys])

        assert isinstance(self.client, aioredis.Redis)  # not a Cluster: that has self._nodes
        pool = self.client.connection_pool

        async def read() -> list[list[str | None]]:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:  # a send or read cut short disconnects the connection: no reply is left for its next user
                await conn.send_packed_command(payload)
                return [await conn.read_response() for _ in keys]
            finally:
                await pool.release(conn)

        records: list[list[str | None]] = await self._call(read())
        return records

    async def info(self, session_id: str) -> SessionInfo | None:
        _, keys = self._session_keys(session_id)  # not the cache: a lookup is no request
        rec = await self._call(self.client.hmget(keys[0], ["c", "l", "i", "n", "r"]))
        return None if rec[0] is None else _info(session_id, rec)


def _replies(results: list[Any]) -> list[Any]:
    """Every reply of a Cluster's pipelines, or StoreUnavailable for the first error among them."""
    for result in results:
        if isinstance(result, BaseException):
            raise StoreUnavailable(f"The session store is unavailable ({type(result).__name__}).") from result
    return results


__all__ = ["RedisStore", "TombReason", "open_successor", "seal_successor"]
