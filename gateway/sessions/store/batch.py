"""Coalesce the calls of one Lua script made in one event-loop turn into one pipelined round trip.

Why: every request touches its session, and redis-py's per-command machinery (pool checkout, timeouts, a
send and a read per command) was most of the Redis store's cost per request: profiled at c=32 (bench/,
issue 6) the gateway spent about twice the CPU per request on Redis as on the memory store. Requests that
arrive together touch together: one pipeline, one write, one read of all the replies. Alone, a call is a
pipeline of one. The Redis commands are the same EVALSHA calls, so atomicity per session is unchanged. On a
Redis Cluster the batch goes out as one pipeline per node that owns some of its calls' slots (cluster.py).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from gateway.errors import StoreUnavailable
from gateway.sessions.store.cluster import NodePipelines, Unanswered

Call = tuple[Sequence[str], list[Any], "asyncio.Future[Any]"]
# (keys, args, result) of a call whose caller did not get its reply: it ran after its caller left (result is
# its reply), or its batch failed after it was sent (result is None: it may or may not have run).
Lost = Callable[[Sequence[str], list[Any], Any], None]


async def bounded(call: Awaitable[Any], timeout: float) -> Any:
    """One Redis call within `timeout`; a failure or a timeout is StoreUnavailable (redis-py disconnects a
    connection whose call was cut short)."""
    try:
        async with asyncio.timeout(timeout):
            return await call
    except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
        raise StoreUnavailable(f"The session store is unavailable ({type(exc).__name__}).") from exc


async def bounded_each(calls: Sequence[Coroutine[Any, Any, Any]], timeout: float) -> list[Any]:
    """Each call bounded, all at once (on a Cluster each to its own node); a failed one is its exception in the
    list, so one node down does not stop the others. Cancelled before gather's tasks first ran, a call was
    never awaited and would warn when collected: such calls are closed here."""
    try:
        return list(await asyncio.gather(*(bounded(call, timeout) for call in calls), return_exceptions=True))
    finally:
        for call in calls:
            if inspect.getcoroutinestate(call) == inspect.CORO_CREATED:
                call.close()


class ScriptBatcher:
    """`await batcher(keys, args)` runs the script like `script(keys=keys, args=args)`, batched; `client` is a
    Redis client, or a Cluster's NodePipelines."""

    def __init__(
        self,
        client: Redis | NodePipelines,
        script: AsyncScript,
        timeout: float,
        on_lost: Lost | None = None,
    ) -> None:
        self._nodes: NodePipelines | None = None
        if isinstance(client, NodePipelines):
            self._nodes = client
            client.script(script)
        else:
            self._client = client
        self._on_lost = on_lost
        self._script = script
        self._timeout = timeout
        self._pending: list[Call] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, keys: Sequence[str], args: list[Any]) -> Any:
        # The loop is kept: on Python 3.11 asyncio.get_running_loop() costs a getpid(2) system call, and
        # every request comes through here. A kept loop that no longer runs (tests run one loop after another)
        # is replaced, with whatever it left queued: those callers are gone with their loop.
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
            self._pending = []
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            # After this turn's other ready callbacks, which may queue calls of their own.
            loop.call_soon(self._flush)
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled (the client left) in the loop turn its reply was handed out: nobody reads it.
            answered = future.done() and not future.cancelled() and future.exception() is None
            if answered and self._on_lost is not None:
                self._on_lost(keys, args, future.result())
            raise

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        assert self._loop is not None  # set by the call that scheduled this flush
        task = self._loop.create_task(self._send(batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _send(self, batch: list[Call]) -> None:
        batch = [call for call in batch if not call[2].done()]  # callers that left: their call is not run
        if not batch:
            return
        if self._nodes is not None:
            await self._send_to_nodes(self._nodes, batch)
            return
        sent = [False]
        try:
            results = await bounded(self._run(batch, sent), self._timeout)
        except StoreUnavailable as exc:
            _fail(batch, exc.message)
            # Sent, then e.g. the replies came too late: each call may have run.
            if sent[0] and self._on_lost is not None:
                for keys, args, _ in batch:
                    self._on_lost(keys, args, None)
            return
        except BaseException as exc:  # cancelled at shutdown: nobody waits forever
            _fail(batch, f"The session store call was abandoned ({type(exc).__name__}).")
            raise
        for (keys, args, future), result in zip(batch, results, strict=True):
            if future.done():  # its request was cancelled (the client left) after the call was sent
                if self._on_lost is not None and not isinstance(result, RedisError):
                    self._on_lost(keys, args, result)
                continue
            if isinstance(result, RedisError):
                future.set_exception(StoreUnavailable(f"The session store failed ({type(result).__name__})."))
            else:
                future.set_result(result)

    async def _send_to_nodes(self, nodes: NodePipelines, batch: list[Call]) -> None:
        """The batch on a Cluster: each node's calls answered (or failed) by themselves, within the timeout."""
        sha = self._script.sha
        try:
            results = await nodes.run(
                [(keys[0], ("EVALSHA", sha, len(keys), *keys, *args)) for keys, args, _ in batch]
            )
        except BaseException as exc:  # cancelled at shutdown: nobody waits forever
            _fail(batch, f"The session store call was abandoned ({type(exc).__name__}).")
            raise
        for (keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, Unanswered) and self._on_lost is not None:
                    self._on_lost(keys, args, None)  # sent, then its node failed: it may have run
                if not future.done():
                    name = type(result).__name__
                    future.set_exception(StoreUnavailable(f"The session store failed ({name})."))
            elif future.done():  # its request was cancelled (the client left) after the call was sent
                if self._on_lost is not None:
                    self._on_lost(keys, args, result)
            else:
                future.set_result(result)

    async def _run(self, batch: list[Call], sent: list[bool]) -> list[Any]:
        missing: list[int] = []  # the calls that met NOSCRIPT
        results = await self._pipelined(batch, sent, missing)
        missing = [i for i in missing if not batch[i][2].done()]
        if missing:
            # The server lost its scripts (a restart, a failover): load it once and run those calls again,
            # together (they did not run). Loading it per call made a burst after a restart take one
            # connection and three round trips per request, and time out.
            await self._client.script_load(self._script.script)
            again = await self._pipelined([batch[i] for i in missing], sent, [])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _pipelined(self, batch: list[Call], sent: list[bool], missing: list[int]) -> list[Any]:
        # The batch goes out on one pooled connection, packed by hiredis (C), and the replies are read
        # straight off it: redis-py's Pipeline packs each argument in Python (Encoder.encode,
        # pack_command) and runs per-command bookkeeping, about 1,500 bytecodes per touch; measured with
        # bench/instructions.py --store redis (see the README's Performance section). It is the same
        # EVALSHA on the same connection pool, health checks and parser; the script object is not used, as
        # a Pipeline would first ask SCRIPT EXISTS, a second round trip.
        sha = self._script.sha
        payload = b"".join(
            [pack_command(("EVALSHA", sha, len(keys), *keys, *args)) for keys, args, _ in batch]
        )
        pool = self._client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            sent[0] = True  # from here the server may run the batch, whatever becomes of its replies
            await conn.send_packed_command(payload)
            replies: list[Any] = []
            for _ in batch:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # this call's error (e.g. NOSCRIPT), not the connection's
                    if isinstance(exc, NoScriptError):
                        missing.append(len(replies))
                    replies.append(exc)
            return replies
        finally:
            # A send or read cut short (timeout, cancel, I/O error) has already disconnected the connection
            # (redis-py's disconnect_on_error), so unread replies never answer the next batch.
            await pool.release(conn)

    async def close(self) -> None:
        for task in list(self._flushing):
            task.cancel()
        await asyncio.gather(*self._flushing, return_exceptions=True)


def _fail(batch: list[Call], message: str) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(StoreUnavailable(message))  # one instance each: tracebacks stay apart
