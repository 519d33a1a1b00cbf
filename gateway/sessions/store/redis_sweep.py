"""The Redis store's expiry indexes: the sweeper's ends of due sessions, and the count of live ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from gateway.sessions.store import Ended, Swept
from gateway.sessions.store.cluster import Command, NodePipelines, replies
from gateway.sessions.store.redis_layout import ShardReader, record_keys, session_info


class RedisSweep(ShardReader):
    """Ends due sessions with the end script in its `due` mode, which re-checks each under its own keys."""

    def __init__(
        self,
        shards: tuple[Any, NodePipelines | None, tuple[str, ...], Callable[[int], str], float],
        end: AsyncScript,
        end_args: tuple[str, ...],  # the end script's ARGV after the mode: tombstone ms, absolute, events
    ) -> None:
        super().__init__(*shards)
        self._end = end
        self._end_args = end_args

    async def expire_due(self, now: float, limit: int) -> Swept:
        """Every shard's due entries in one pipelined read, then one pipelined claim per entry."""
        per_shard = max(1, limit // len(self._indexes))
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
        tomb_ms, *rest = self._end_args
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, members in enumerate(due):
                tag = self._tag(shard)
                for digest in members:
                    args = [digest, "idle", repr(now), tomb_ms, "due", *rest]
                    await self._end(keys=record_keys(tag, digest), args=args, client=pipe)
            results = await self._call(pipe.execute())
        ended = [Ended(session_info("", r[1:6]), r[0]) for r in results if r]
        return Swept(ended, more=more)

    async def _expire_on_nodes(self, nodes: NodePipelines, now: float, per_shard: int) -> Swept:
        """expire_due on a Cluster: the same two steps, each one pipeline per node, the nodes at once."""
        reads: list[Command] = [
            (index, ("ZRANGEBYSCORE", index, "-inf", repr(now), "LIMIT", 0, per_shard))
            for index in self._indexes
        ]
        due: list[list[str]] = replies(await nodes.run(reads))
        more = any(len(members) >= per_shard for members in due)
        tomb_ms, *rest = self._end_args
        sha, tail = self._end.sha, ("idle", repr(now), tomb_ms, "due", *rest)
        calls: list[Command] = []
        for shard, members in enumerate(due):
            tag = self._tag(shard)
            for digest in members:
                keys = record_keys(tag, digest)
                calls.append((keys[0], ("EVALSHA", sha, 4, *keys, digest, *tail)))
        results = await nodes.run(calls)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and len(failed) == len(results):
            replies(failed)
        # A node that failed now keeps its due entries for the next sweep; the others' ends are counted.
        ended = [
            Ended(session_info("", r[1:6]), r[0]) for r in results if r and not isinstance(r, BaseException)
        ]
        return Swept(ended, more=more)

    async def count(self) -> int:
        if self._nodes is not None:
            return sum(replies(await self._nodes.run([(index, ("ZCARD", index)) for index in self._indexes])))
        async with self.client.pipeline(transaction=False) as pipe:
            for index in self._indexes:
                pipe.zcard(index)
            counts = await self._call(pipe.execute())
        return int(sum(counts))
