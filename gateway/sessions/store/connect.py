"""Redis clients for the stores (sessions, deferred answers): one server, a master found through Sentinel, or a
Redis Cluster; one set of options, and the reasons for them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

Client = aioredis.Redis | RedisCluster


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's master discovery with the blocking pool's wait-for-a-connection behaviour."""


def connect(
    url: str,
    *,
    timeout: float,
    max_connections: int,
    sentinels: tuple[str, ...] = (),
    sentinel_master: str = "mymaster",
    cluster: bool = False,
    decode_responses: bool = True,
) -> tuple[Client, Sentinel | None]:
    """A client for `url` (with `cluster`, any node of the Cluster), and the Sentinel it asks, if any."""
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        # No socket_timeout: with one, redis-py sends through asyncio.wait_for, a Task per command on Python
        # 3.11 (profiled: ~6% of a request on the session store). Each call is bounded as a whole instead
        # (batch.bounded); a call cut short disconnects its connection (redis-py does so on any BaseException).
        "socket_timeout": None,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        # Fail fast and let the failure policy decide; the next command reconnects by itself.
        "retry": Retry(NoBackoff(), 0),
        # With maintenance notifications on ("auto", the default under RESP3), redis-py 8.1's pool skips its
        # check-out test for connections the server closed, so after a Redis restart each pooled connection
        # failed one batch of requests (redis-py #4252, fixed by #4260, not yet released). They serve Redis
        # Enterprise's planned-maintenance hand-offs, which the gateway does not need.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if cluster:
        # Up to max_connections per node; a call that finds none free fails at once (redis-py's cluster pool
        # does not wait like the blocking pool). The nodes are found from this one (CLUSTER SLOTS), and found
        # again from any node known after a failover or a resharding (cluster.NodePipelines).
        return RedisCluster.from_url(url, max_connections=max_connections, **options), None
    if sentinels:
        sentinel = _sentinel(url, sentinels, timeout, options)
        client = sentinel.master_for(
            sentinel_master,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=max_connections,
            timeout=timeout,
        )
        return client, sentinel
    # A blocking pool: under load a request waits (up to `timeout`) for a connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **options
    )
    return aioredis.Redis(connection_pool=pool), None


def _sentinel(url: str, sentinels: tuple[str, ...], timeout: float, options: dict[str, Any]) -> Sentinel:
    """Asks the Sentinels which server is the master; its clients follow failovers by themselves."""
    parts = urlsplit(url)
    addresses = [(host, int(port)) for host, _, port in (item.rpartition(":") for item in sentinels)]
    return Sentinel(  # type: ignore[no-untyped-call]
        addresses,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "maint_notifications_config": options["maint_notifications_config"],
        },
        password=parts.password,
        db=int(parts.path.strip("/") or 0),
        ssl=parts.scheme == "rediss",
        **options,
    )


async def disconnect(client: Client, sentinel: Sentinel | None) -> None:
    """Close `client`'s connections, and its Sentinel's."""
    await client.aclose()
    if isinstance(client, aioredis.Redis):
        await client.connection_pool.disconnect()
    if sentinel is not None:
        for sentinel_client in sentinel.sentinels:
            await sentinel_client.aclose()


__all__ = ["Client", "connect", "disconnect"]
