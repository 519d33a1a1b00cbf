"""Pipelines on a Redis Cluster: commands grouped by the node that owns each one's slot, one packed write and
one read of the replies per node, every node at once (issue 20).

Not redis-py's ClusterPipeline: it packs each argument in Python (what batch.py avoids on the hot path), raises
the first error of the whole pipeline, and cannot tell a command that never left from one whose reply was lost.
Here a node that fails fails only its own commands, and a command that surely did not run (no connection to
its node, MOVED after a failover or a resharding) is sent again once the slot map is refreshed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any, Final

from hiredis import pack_command
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ConnectionError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from gateway.errors import StoreUnavailable

# (the key that routes it, the command and its arguments); every key of one command shares that key's slot.
Command = tuple[str, tuple[Any, ...]]

_PAUSE: Final = 0.005  # seconds; before the slot map is read again the nth time: _PAUSE * 2**n, from n = 2
_ASKING: Final = pack_command(("ASKING",))


class Unanswered(ConnectionError):
    """Sent, and no reply came (the node failed, or was slower than the deadline): the command may have run."""


class NodePipelines:
    """`await nodes.run(commands)`: each command's reply or error, in order, within `timeout` seconds."""

    def __init__(self, client: RedisCluster, timeout: float) -> None:
        self.client = client
        self._timeout = timeout
        self._scripts: dict[str, str] = {}  # sha -> source, loaded on a node that answers NOSCRIPT
        self._starting: asyncio.Task[RedisCluster] | None = None

    def script(self, script: AsyncScript) -> str:
        """Remember a script's source, so its EVALSHA works on a node that lost or never had it; its SHA1."""
        source = script.script
        self._scripts[script.sha] = source if isinstance(source, str) else bytes(source).decode()
        return script.sha

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply, or an exception: a ResponseError (its own), Unanswered (it may have run), or
        another RedisError or TimeoutError (it did not run)."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        results: list[Any] = [None] * len(commands)
        todo: Sequence[int] = range(len(commands))
        asking: dict[int, ClusterNode] = {}  # ASK: where a migrating slot's key went, for one command
        for round_ in itertools.count():
            try:
                async with asyncio.timeout_at(deadline):
                    if round_:
                        # Some found no connection, or MOVED: the slot map is stale (a failover, a resharding).
                        # Read again at once, then after growing pauses: the nodes learn of a failover by gossip,
                        # and one asked early may still name the old master. Until the deadline.
                        await asyncio.sleep(0.0 if round_ == 1 else _PAUSE * 2**round_)
                        await self.client.nodes_manager.initialize()  # one for its concurrent callers
                    if self.client.nodes_manager.default_node is None:  # first use, or redis-py closed it
                        await self._start()
                    groups = self._groups(commands, todo, asking)
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                for i in todo:
                    results[i] = exc  # none of them ran
                break
            if len(groups) == 1:  # a Task less
                [(node, part)] = groups.items()
                todo = await self._node(node, part, commands, results, deadline, asking)
            else:
                again = await asyncio.gather(
                    *(
                        self._node(node, part, commands, results, deadline, asking)
                        for node, part in groups.items()
                    )
                )
                todo = [i for part in again for i in part]
            if not todo:
                break
            asking = {}
            for i in todo:
                if isinstance(results[i], AskError) and not isinstance(results[i], MovedError):
                    target = self.client.nodes_manager.get_node(results[i].host, results[i].port)
                    if target is not None:
                        asking[i] = target
        return results

    async def _start(self) -> None:
        """The client's start (the slot map, and redis-py's command table for its own calls), run to its end
        even when the call waiting for it gives up: cut short at every call's deadline, a slow start (a cold
        machine; callgrind) would be tried again, and cut short again, by every call."""
        starting = self._starting
        if starting is None or starting.done() or starting.get_loop() is not asyncio.get_running_loop():
            self._starting = starting = asyncio.ensure_future(self.client.initialize())
            starting.add_done_callback(_retrieve)
        await asyncio.shield(starting)

    async def close(self) -> None:
        """Stop a start still running (the client's connections are the client's to close)."""
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.wait([self._starting])

    def _groups(
        self, commands: Sequence[Command], todo: Sequence[int], asking: dict[int, ClusterNode]
    ) -> dict[ClusterNode, list[int]]:
        slots = self.client.nodes_manager.slots_cache
        groups: dict[ClusterNode, list[int]] = {}
        for i in todo:
            node = asking.get(i)
            if node is None:
                nodes = slots.get(key_slot(commands[i][0].encode()))
                if not nodes:
                    raise ConnectionError("a slot is not covered by the cluster")
                node = nodes[0]  # the master
            groups.setdefault(node, []).append(i)
        return groups

    async def _node(
        self,
        node: ClusterNode,
        part: list[int],
        commands: Sequence[Command],
        results: list[Any],
        deadline: float,
        asking: dict[int, ClusterNode],
    ) -> list[int]:
        """Run `part` on `node`, filling `results`; the indexes that did not run and may be sent again."""
        try:
            conn = node.acquire_connection()
        except MaxConnectionsError as exc:
            for i in part:
                results[i] = exc
            return []
        waiting, answered = part, 0  # to send, or sent: of these, the first `answered` have their replies
        sent = False
        retry: list[int] = []
        try:
            async with asyncio.timeout_at(deadline):
                await node.disconnect_if_needed(conn)
                await _ready(conn)
                while waiting:
                    sent, answered = True, 0  # from here the node may run them, whatever becomes of replies
                    payload = [
                        _ASKING + pack_command(commands[i][1])
                        if i in asking
                        else pack_command(commands[i][1])
                        for i in waiting
                    ]
                    await conn.send_packed_command(b"".join(payload))
                    missing: list[int] = []
                    for i in waiting:
                        try:
                            if i in asking:
                                await conn.read_response()  # ASKING's OK
                            results[i] = await conn.read_response()
                        except ResponseError as exc:  # this command's error, not the connection's
                            results[i] = exc
                            if isinstance(exc, NoScriptError):
                                missing.append(i)
                            elif isinstance(exc, MovedError | AskError | TryAgainError):
                                retry.append(i)  # refused: it did not run
                        answered += 1
                    # The node lost its scripts (a restart; a replica promoted by a failover never had them):
                    # load them on this connection and send those calls again, together.
                    for sha in {commands[i][1][1] for i in missing}:
                        await conn.send_command("SCRIPT", "LOAD", self._scripts[sha])
                        await conn.read_response()
                    waiting = missing
        except (RedisError, OSError, TimeoutError) as exc:
            # A cut send or read has already disconnected the connection (redis-py's disconnect_on_error).
            unanswered = waiting[answered:]
            for i in unanswered:
                results[i] = Unanswered(f"{type(exc).__name__} from {node.name}") if sent else exc
            if not sent and not isinstance(exc, TimeoutError):
                retry.extend(unanswered)  # no connection to the node: the slot map may name a dead master
        finally:
            node.release(conn)
        return retry


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A failed start's error is its waiters' (if any are left): never "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


async def _ready(conn: Connection) -> None:
    """Connected, and nothing unread on it (a server that went away leaves EOF): like redis-py's pool does on
    check-out, so a pooled connection to a stopped master is found dead before anything is sent on it."""
    await conn.connect()  # type: ignore[no-untyped-call]
    try:
        if await conn.can_read():
            raise ConnectionError("Connection has data")
    except (ConnectionError, OSError):
        await conn.disconnect()
        await conn.connect()  # type: ignore[no-untyped-call]


__all__ = ["Command", "NodePipelines", "Unanswered"]


def replies(results: list[Any]) -> list[Any]:
    """Every reply of a Cluster's pipelines, or StoreUnavailable for the first error among them."""
    for result in results:
        if isinstance(result, BaseException):
            raise StoreUnavailable(f"The session store is unavailable ({type(result).__name__}).") from result
    return results
