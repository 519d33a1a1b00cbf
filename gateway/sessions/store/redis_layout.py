"""The Redis store's keys, and what its records say: digests, sealed successors, the events its scripts write.

Layout, per shard `<tag>` = `<prefix>:{<n>}` (`{<n>}` is a hash tag: one shard's keys share one Cluster slot):
    <tag>:s:<h>   HASH c (created) l (last seen) i (idle timeout) n (requests) r (replica)
    <tag>:t:<h>   HASH r (why it ended) s (successor, sealed) p (claim time) o (claim owner); the tombstone
                  and the claim
    <tag>:v:<h>   SET   owners of touches disowned before they ran (their requests gave up), for claim_ttl
    <tag>:exp     ZSET  h -> deadline: the expiry index every replica sweeps
    <tag>:ev      STREAM the shard's lifecycle events (StreamEvents), when a sink is set; <tag>:ev:lease the
                  replica delivering them (gateway/ops/event_streams.py)
`h` is a hash of the session id: a dump of the keyspace leaks no live session (the record's field `e` keeps
the id only for events that name it). A successor id is sealed with a keystream derived from the id it
replaces, which only its holder knows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.sessions.store import SessionInfo
from gateway.sessions.store.batch import bounded
from gateway.sessions.store.cluster import NodePipelines


def record_keys(tag: str, digest: str) -> tuple[str, str, str, str]:
    """A session's record, its tombstone, its shard's expiry index and its shard's event stream."""
    return f"{tag}:s:{digest}", f"{tag}:t:{digest}", f"{tag}:exp", f"{tag}:ev"


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


Keys = tuple[str, tuple[str, str, str, str, str]]  # a session's digest and keys (RedisStore._session_keys)


@dataclass(frozen=True, slots=True)
class StreamEvents:
    """Lifecycle events the store's scripts write to each shard's stream, `<prefix>:{<n>}:ev` (issue 20)."""

    on: bool = False
    include_id: bool = True  # false: events name sessions by digest, and records keep no id
    retention: float = 86400.0  # seconds an entry stays in its stream
    gateway: str = ""  # the instance named in events

    def args(self) -> tuple[str, str, str]:
        """The three ARGV every emitting script ends with (lua/emit.lua)."""
        return ("1" if self.on else "", repr(self.retention), self.gateway)


def session_info(session_id: str, rec: list[str]) -> SessionInfo:
    created, last_seen, idle, requests, replica = rec[:5]
    return SessionInfo(session_id, float(created), float(last_seen), float(idle), int(requests), replica)


class ShardReader:
    """What works across every shard's expiry index (the sweep, the listing): the client, or on a Cluster its
    per-node pipelines, the indexes in shard order, and each shard's tag."""

    def __init__(
        self,
        client: Any,  # redis.asyncio Redis or RedisCluster
        nodes: NodePipelines | None,
        indexes: tuple[str, ...],
        tag: Callable[[int], str],
        timeout: float,
    ) -> None:
        self.client = client
        self._nodes = nodes
        self._indexes = indexes
        self._shards = len(indexes)
        self._tag = tag
        self._timeout = timeout

    async def _call(self, coro: Any) -> Any:
        return await bounded(coro, self._timeout)
