"""The Redis store's session listing for the admin API: pages of live sessions in O(limit) per call."""

from __future__ import annotations

import base64
import math
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command

from gateway.sessions.store import SessionInfo, SessionView, id_digest
from gateway.sessions.store.cluster import replies
from gateway.sessions.store.redis_layout import ShardReader, session_info


class RedisListing(ShardReader):
    """Reads the store's expiry indexes and records; writes nothing."""

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
            return replies(await self._nodes.run([(key, ("HMGET", key, *fields)) for key in keys]))
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
        h = id_digest(session_id)  # not the store's cache: a lookup is no request
        record = f"{self._tag(int(h[:8], 16) % self._shards)}:s:{h}"
        rec = await self._call(self.client.hmget(record, ["c", "l", "i", "n", "r"]))
        return None if rec[0] is None else session_info(session_id, rec)
