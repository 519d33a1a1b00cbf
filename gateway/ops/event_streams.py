"""Lifecycle events of the Redis store: read from its per-shard streams and delivered by the replicas together.

The store's scripts append each event to `<prefix>:{<n>}:ev` in the same step as the change
(sessions/store/lua/emit.lua), so an event is written exactly when its change is. Delivery goes through one
consumer group shared by the replicas. Each shard's stream is read by one replica at a time, the holder of its
lease (`<stream>:lease`, renewed every round and during waits, lapsing after events.claim_idle), so a
session's events reach the webhook in order; each replica holds at most its share of the streams, so all of
them deliver at once. A replica reads what it left unacknowledged first (XREADGROUP
"0", then ">"), acknowledges after a 2xx or a drop (XACK), and on taking a lease claims every entry the
stream's last reader left pending (XAUTOCLAIM), until that succeeds: a replica killed mid-delivery loses
nothing, another delivers its entries once the lease lapses. Every Redis call has a deadline; a stream whose
node fails is skipped, the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from gateway.config import EventsConfig
from gateway.errors import StoreUnavailable
from gateway.ops.event_delivery import Sink, Verdict, backoff, settle
from gateway.ops.events import instance_name, iso, stop
from gateway.ops.metrics import EVENT_TYPES, Metrics
from gateway.sessions.store.batch import bounded, bounded_each
from gateway.sessions.store.scripts import lua

log = logging.getLogger("gateway")

GROUP: Final = "session-gateway"
_BACKLOG_EVERY: Final = 5.0  # seconds between reads of the held streams' backlog (XINFO GROUPS)

_LEASE: Final = lua("lease")
_UNLEASE: Final = lua("unlease")
_MEMBERS: Final = lua("members")
_FORGET: Final = lua("forget")

Entry = tuple[str, str, dict[str, str]]  # (stream, entry id, fields)


def to_event(stream: str, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stream entry as the webhook's JSON event; its id is the stream's and the entry's, unique and stable."""
    if fields.get("type") not in EVENT_TYPES:
        raise ValueError(f"not a lifecycle event: {fields.get('type')!r}")
    event: dict[str, Any] = {"id": f"{stream}-{entry_id}", "type": fields["type"]}
    event["at"] = iso(int(entry_id.split("-", 1)[0]) / 1000)
    for key in ("session", "gateway", "previous", "reason", "replica"):
        event[key] = fields.get(key) or None
    if "duration" in fields:
        event["duration"] = float(fields["duration"])
    if "requests" in fields:
        event["requests"] = int(fields["requests"])
    return event


def _lost_group(result: object) -> bool:
    """Whether a call failed because its stream has no consumer group any more (Redis restarted without its
    data, the key was deleted or evicted; the scripts' XADD makes the stream again, without the group)."""
    return isinstance(result, StoreUnavailable) and "NOGROUP" in str(result.__cause__)


class StreamDelivery:
    """One replica's part of delivering the store's events to the sink."""

    def __init__(
        self,
        client: Any,  # the store's redis.asyncio Redis or RedisCluster (decode_responses=True)
        streams: Sequence[str],
        members: str,  # the set of the replicas delivering (sessions/store/lua/members.lua)
        config: EventsConfig,
        sink: Sink,
        metrics: Metrics,
        timeout: float = 1.0,  # seconds per Redis call (the store's client has no socket timeout of its own)
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._streams = tuple(streams)
        self._config = config
        self._sink = sink
        self._metrics = metrics
        self._timeout = timeout
        self.consumer = f"{instance_name(config)}-{secrets.token_hex(4)}"
        self._lease_ms = int(config.claim_idle * 1000)
        self._lease = client.register_script(_LEASE)
        self._unlease = client.register_script(_UNLEASE)
        self._members = client.register_script(_MEMBERS)
        self._forget = client.register_script(_FORGET)
        self._members_key = members
        self._replicas = (
            1  # delivering replicas, as last counted: each holds at most its share of the streams
        )
        self.held: tuple[str, ...] = ()  # the streams whose lease this replica holds
        self._grouped: set[str] = set()  # streams whose consumer group exists
        self._claimed: set[str] = set()  # held streams whose last holder's pending entries are now ours
        self._tasks: list[asyncio.Task[None]] = []
        self._posting: asyncio.Future[Verdict] | None = None  # the batch being delivered
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="event-stream-delivery"),
            loop.create_task(self._watch_backlog(), name="event-stream-backlog"),
        ]

    async def close(self, timeout: float) -> None:
        """Deliver what this replica's streams hold within `timeout`, then hand the leases back at once, so
        another replica goes on without waiting for them to lapse."""
        self._stopping = True
        for task in self._tasks:
            await stop(task)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            async with asyncio.timeout(max(0.1, timeout - 0.5)):  # the last half second is the leases'
                if self._posting is not None:  # its answer and acknowledgement, or it would be posted again
                    with contextlib.suppress(Exception):
                        await self._posting
                await self._take_leases(take=False)  # read only what is still this replica's
                while batch := await self._read("0") or await self._read(">"):
                    if await self.deliver(batch) == "retry":
                        break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await self._each(
                    [
                        *(self._unlease(keys=[f"{s}:lease"], args=[self.consumer]) for s in self.held),
                        self._client.zrem(self._members_key, self.consumer),  # the others' shares grow now
                    ]
                )
        await self._sink.close()

    async def _call(self, call: Awaitable[Any]) -> Any:
        return await bounded(call, self._timeout)

    async def _each(self, calls: Sequence[Coroutine[Any, Any, Any]]) -> list[Any]:
        return await bounded_each(calls, self._timeout)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._groups()
                await self._take_leases()
                batch = await self._read("0") or await self._read(">")  # ours left unacknowledged first
                if not batch:
                    failures = 0
                    await self._pause(self._config.flush_interval)
                    continue
                # Shielded: stopping lets a batch being posted get its answer (close() waits for it).
                posting = self._posting = asyncio.ensure_future(self.deliver(batch))
                verdict = await asyncio.shield(posting)
            except StoreUnavailable as exc:
                log.info("event streams unavailable (%s); retrying", exc.message)
                verdict = "retry"
            except Exception:  # a bug of ours must not end delivery: one line, then retry as for a failure
                log.exception("event delivery failed")
                verdict = "retry"
            failures = failures + 1 if verdict == "retry" else 0
            if failures:
                await self._pause(backoff(failures, self._sink))

    async def _pause(self, seconds: float) -> None:
        """Sleep, renewing the leases at least every claim_idle / 3: a backoff must not hand them over."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, self._config.claim_idle / 3))
            if end - loop.time() > 0:
                with contextlib.suppress(StoreUnavailable):
                    await self._take_leases(take=False)

    async def _groups(self) -> None:
        async def create(stream: str) -> str:
            try:
                await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # BUSYGROUP: another replica made it
                    raise
            return stream

        missing = [stream for stream in self._streams if stream not in self._grouped]
        if missing:
            self._grouped |= {r for r in await self._each([create(s) for s in missing]) if isinstance(r, str)}

    async def _take_leases(self, *, take: bool = True) -> None:
        """Renew this replica's leases, and with `take` take free ones up to its share of the streams (handing
        back what is over it); claim what each newly taken stream's last holder left pending, until that
        succeeds. The share is the streams over the replicas delivering, rounded up: a replica alone holds
        them all, a joining one gets its part as the others hand theirs back, a dead one's leases lapse and
        its entry in the set with them, so the others' shares grow to cover its streams."""
        streams = self._streams if take else self.held
        calls = [self._lease(keys=[f"{s}:lease"], args=[self.consumer, self._lease_ms]) for s in streams]
        member = self._members(keys=[self._members_key], args=[self.consumer, self._lease_ms])
        *answers, replicas = await self._each([*calls, member])
        counted = isinstance(replicas, int) and replicas > 0
        if counted:
            self._replicas = replicas
        for stream, answer in zip(streams, answers, strict=True):
            if answer in (0, 2):  # lost, or taken anew: its last holder may have left entries pending
                self._claimed.discard(stream)
        # A lease whose renewal failed is not read this round: it may have lapsed.
        held = [s for s, answer in zip(streams, answers, strict=True) if answer in (1, 2)]
        share = -(-len(self._streams) // self._replicas)
        # Uncounted (the set's node failing), a replica hands nothing back: a stream taken and handed back
        # every round would be read by no one while the set is out.
        if take and counted and len(held) > share:
            before = set(self.held)  # kept first: a rebalance moves as few streams as it can
            keep = sorted(held, key=lambda s: s not in before)[:share]
            surplus = [s for s in held if s not in keep]
            await self._each([self._unlease(keys=[f"{s}:lease"], args=[self.consumer]) for s in surplus])
            self._claimed.difference_update(surplus)  # what this replica left pending there, the next claims
            held = keep
        self.held = tuple(held)
        unclaimed = [stream for stream in self.held if stream not in self._claimed]
        if unclaimed:
            claimed = await self._each([self._claim_all(stream) for stream in unclaimed])
            self._claimed |= {r for r in claimed if isinstance(r, str)}
            self._regroup([s for s, r in zip(unclaimed, claimed, strict=True) if _lost_group(r)])

    def _regroup(self, streams: Sequence[str]) -> None:
        """Streams found without their group: made again next round, from their first entry (none lost; what
        was delivered before and retained may come again, with its id)."""
        if streams:
            log.warning(
                "%d event stream(s) lost their consumer group (a Redis restart without its data, a deleted "
                "key); making it again",
                len(streams),
            )
            self._grouped.difference_update(streams)
            self._claimed.difference_update(streams)

    async def _claim_all(self, stream: str) -> str:
        """Everything the stream's last reader left pending becomes this replica's, to deliver first."""
        start = "0-0"
        while True:
            # Not JUSTID: redis-py then returns the ids alone, without the cursor to go on from.
            reply = await self._client.xautoclaim(stream, GROUP, self.consumer, 0, start, count=1000)
            start = reply[0]
            if start == "0-0":
                break
        return stream

    def _forget_gone(self, stream: str) -> Coroutine[Any, Any, Any]:
        """Delete the group's other consumers of a held stream that hold nothing there and have not read for
        as long as a lease lives (lua/forget.lua): gone replicas', or ones that handed the stream over (one
        that takes it again is a consumer again at its first read). Without this the group would keep one per
        process start forever."""
        keys = [stream, f"{stream}:lease"]
        return self._forget(keys=keys, args=[self.consumer, GROUP, self._lease_ms])  # type: ignore[no-any-return]

    async def _watch_backlog(self) -> None:
        """events_queue, beside delivery (a send may wait for events.timeout): the entries of the streams this
        replica holds not yet acknowledged, read or not, so the replicas' sum is the whole backlog. And the
        held streams' gone consumers, forgotten."""
        while True:
            await asyncio.sleep(_BACKLOG_EVERY)
            held = self.held
            await self._each([self._forget_gone(stream) for stream in held])
            groups = await self._each([self._client.xinfo_groups(stream) for stream in held])
            backlog = 0
            for stream_groups in groups:
                if isinstance(stream_groups, BaseException):
                    continue
                for group in stream_groups:
                    if group["name"] == GROUP:
                        backlog += int(group["pending"]) + int(group.get("lag") or 0)
            self._metrics.events_queue.set(backlog)

    async def _read(self, start: str) -> list[Entry]:
        streams = [s for s in self.held if s in self._claimed and s in self._grouped]
        if not streams:
            return []
        count = self._config.batch
        if self._cluster:
            replies = await self._each(
                [self._client.xreadgroup(GROUP, self.consumer, {s: start}, count=count) for s in streams]
            )
            self._regroup([s for s, r in zip(streams, replies, strict=True) if _lost_group(r)])
        else:
            try:
                replies = [
                    await self._call(
                        self._client.xreadgroup(
                            GROUP, self.consumer, dict.fromkeys(streams, start), count=count
                        )
                    )
                ]
            except StoreUnavailable as exc:
                if not _lost_group(exc):
                    raise
                self._regroup(
                    streams
                )  # which one is not said: every one read is made again (BUSYGROUP if kept)
                return []
        batch: list[Entry] = []
        trimmed: dict[str, list[str]] = {}
        for reply in replies:
            if isinstance(reply, BaseException):
                continue  # that stream's node: next round
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    if fields:
                        batch.append((stream, entry_id, fields))
                    else:  # trimmed by events.retention while pending: nothing left to deliver
                        trimmed.setdefault(stream, []).append(entry_id)
        if trimmed:
            log.warning(
                "dropped %d events trimmed by events.retention before they were delivered",
                sum(map(len, trimmed.values())),
            )
            await self._each([self._client.xack(s, GROUP, *ids) for s, ids in trimmed.items()])
        return batch[:count]

    async def deliver(self, batch: list[Entry]) -> Verdict:
        """Send one batch; acknowledge what was delivered or dropped, count what happened."""
        good: list[Entry] = []
        events: list[dict[str, Any]] = []
        bad: list[Entry] = []
        for entry in batch:
            try:
                events.append(to_event(*entry))
                good.append(entry)
            except (KeyError, ValueError, IndexError):  # not an entry this gateway wrote: never deliverable
                bad.append(entry)
        if bad:
            log.warning("dropped %d stream entries that are not lifecycle events", len(bad))
        verdict: Verdict = await self._sink.send(events) if events else "delivered"
        settled = settle(self._metrics, events, verdict, self._config.max_age)
        done = [entry for entry, finished in zip(good, settled, strict=True) if finished]
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _ in [*done, *bad]:
            by_stream.setdefault(stream, []).append(entry_id)
        await self._each([self._client.xack(s, GROUP, *ids) for s, ids in by_stream.items()])
        return verdict
