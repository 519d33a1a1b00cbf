"""Deferred answers in Redis, shared by gateway replicas: a pick-up may reach any of them (issue 18).

Layout, under the store's prefix:
    <prefix>:d:<h>      HASH u (digest of the bound session; "" when unbound), then, once the bot answered,
                        a (JSON [status, reason, [[name, value], ...]]) and b (the body, raw bytes); TTL `keep`
    <prefix>:d:done     channel: `h` of each answer finished (or dropped), so pick-ups on every replica wake
    <prefix>:d:taken    channel: `h` of each answer delivered, so the replica that opened it stops counting it
`h` is a hash of the token: a dump of the keyspace (or a listener on the channels) cannot pick anything up.

A pick-up waits on an asyncio.Event woken by this process's subscriber (one connection per RedisDeferred), and
checks the key again every FALLBACK seconds anyway, so a message lost while the subscriber reconnects costs at
most that much latency. Each script is one round trip and atomic: of two replicas racing for one answer,
exactly one gets it.

`max_pending` is counted per gateway process: the tokens it opened that are neither delivered (on any
replica, as far as the taken channel tells it), dropped, nor past `keep`; `on_expired` counts the last kind
(a delivery whose message was lost is counted there too). N replicas keep up to N * max_pending in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from gateway.config import Config
from gateway.sessions.store.batch import bounded
from gateway.sessions.store.connect import Client, connect, disconnect
from gateway.sessions.store.scripts import lua
from gateway.upstream.deferred import RUNNING, Answer

log = logging.getLogger("gateway")

FALLBACK: Final = 1.0  # seconds between a waiting pick-up's checks of its key when no message wakes it
RESUBSCRIBE: Final = 1.0  # seconds between the subscriber's attempts to reconnect

_OPEN: Final = lua("deferred_open")
_FINISH: Final = lua("deferred_finish")
_DROP: Final = lua("deferred_drop")
_TAKE: Final = lua("deferred_take")


_TOKEN: Final = b"session-gateway/deferred"  # the domains of the two digests
_SESSION: Final = b"session-gateway/deferred-session"


def _digest(domain: bytes, value: str) -> bytes:
    return hashlib.sha256(domain + b"\x00" + value.encode()).hexdigest()[:32].encode()


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisDeferred:
    """Pending answers in Redis: `redis` is a URL (a client of its own is made) or a client made with
    decode_responses=False (left open on close)."""

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        max_pending: int,
        prefix: str = "sg",
        timeout: float = 0.5,
        max_connections: int = 8,  # the subscriber holds one of them
        sentinels: tuple[str, ...] = (),
        sentinel_master: str = "mymaster",
        cluster: bool = False,
        on_expired: Callable[[], None] = lambda: None,
    ) -> None:
        self._sentinel: Sentinel | None = None
        self.client: Client
        if isinstance(redis, str):
            # Like the session store's client (gateway/sessions/store/connect.py), returning raw bytes: bodies are
            # bytes, whatever their encoding. On a Cluster each script has one key, and PUBLISH reaches every
            # node's subscribers.
            self.client, self._sentinel = connect(
                redis,
                timeout=timeout,
                max_connections=max_connections,
                sentinels=sentinels,
                sentinel_master=sentinel_master,
                cluster=cluster,
                decode_responses=False,
            )
            self._owned = True
        else:
            if redis.connection_pool.connection_kwargs.get("decode_responses"):
                raise ValueError("RedisDeferred needs a Redis client with decode_responses=False")
            self.client, self._owned = redis, False
        self._prefix = f"{prefix}:d"
        self._done_channel = f"{self._prefix}:done".encode()
        self._taken_channel = f"{self._prefix}:taken".encode()
        self._timeout = timeout
        self._max = max_pending
        self._on_expired = on_expired  # one of this process's tokens nobody picked up within `keep`
        self._open = self.client.register_script(_OPEN)
        self._finish = self.client.register_script(_FINISH)
        self._take = self.client.register_script(_TAKE)
        self._drop = self.client.register_script(_DROP)
        # Token digests this process opened -> loop time they lapse; insertion order = expiry order for one keep.
        self._pending: dict[bytes, float] = {}
        self._waiters: dict[bytes, set[asyncio.Event]] = {}  # token digest -> this process's waiting pick-ups
        self._subscriber: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def for_config(cls, config: Config, *, on_expired: Callable[[], None] = lambda: None) -> RedisDeferred:
        """The deferred answers of `config`: the session store's Redis (session.redis_*), its own connections."""
        s = config.session
        return cls(
            s.redis_url,
            max_pending=config.deferred.max_pending,
            prefix=s.redis_prefix,
            timeout=s.redis_timeout,
            sentinels=s.redis_sentinels,
            sentinel_master=s.redis_sentinel_master,
            cluster=s.redis_cluster,
            on_expired=on_expired,
        )

    def _key(self, digest: bytes) -> bytes:
        return b"%s:%s" % (self._prefix.encode(), digest)

    async def open(self, token: str, session: str | None, keep: float) -> bool:
        self._listen()
        now = asyncio.get_running_loop().time()
        while self._pending:
            digest, lapses = next(iter(self._pending.items()))
            if lapses > now:
                break
            del self._pending[digest]
            self._on_expired()
        if len(self._pending) >= self._max:
            return False
        digest = _digest(_TOKEN, token)
        self._pending[digest] = now + keep  # the slot is held while the call runs
        bound = _digest(_SESSION, session) if session is not None else b""
        try:
            await bounded(self._open(keys=[self._key(digest)], args=[bound, _ms(keep)]), self._timeout)
        except BaseException:
            self._pending.pop(digest, None)
            raise
        return True

    async def finish(self, token: str, answer: Answer, keep: float) -> None:
        digest = _digest(_TOKEN, token)
        meta = json.dumps([answer.status, answer.reason, answer.headers], separators=(",", ":"))
        args: list[bytes | str | int] = [meta, answer.body, _ms(keep), self._done_channel, digest]
        stored = await bounded(self._finish(keys=[self._key(digest)], args=args), self._timeout)
        if not stored:
            self._pending.pop(digest, None)
        elif digest in self._pending:
            del self._pending[digest]
            self._pending[digest] = asyncio.get_running_loop().time() + keep  # keep the order by expiry
        self._wake(digest)  # this process's pick-ups need not wait for the message

    async def drop(self, token: str) -> None:
        digest = _digest(_TOKEN, token)
        self._pending.pop(digest, None)
        await bounded(self._drop(keys=[self._key(digest)], args=[self._done_channel, digest]), self._timeout)
        self._wake(digest)

    async def take(self, token: str, session: str | None, wait: float) -> Answer | str | None:
        digest = _digest(_TOKEN, token)
        key = self._key(digest)
        bound = _digest(_SESSION, session) if session is not None else b""
        args = [bound, self._taken_channel, digest]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        event = asyncio.Event()  # registered before the first check: a message after it is not missed
        self._waiters.setdefault(digest, set()).add(event)
        try:
            while True:
                found = await bounded(self._take(keys=[key], args=args), self._timeout)
                if found != 0:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return RUNNING
                self._listen()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(FALLBACK, remaining)):
                        await event.wait()
                event.clear()
        finally:
            waiters = self._waiters[digest]
            waiters.discard(event)
            if not waiters:
                del self._waiters[digest]
        if found is None:
            return None
        self._pending.pop(digest, None)
        meta, body = found
        status, reason, headers = json.loads(meta)
        return Answer(status, reason, tuple((name, value) for name, value in headers), body)

    def _wake(self, digest: bytes) -> None:
        for event in self._waiters.get(digest, ()):
            event.set()

    def _listen(self) -> None:
        """Start the subscriber (in the running loop) unless it runs."""
        if self._subscriber is None and not self._closed:
            self._subscriber = asyncio.get_running_loop().create_task(self._subscribe())

    async def _subscribe(self) -> None:
        failing = False
        while True:
            pubsub: PubSub = self.client.pubsub()
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(self._done_channel, self._taken_channel)
                if failing:
                    log.info("deferred_subscriber_restored")
                    failing = False
                for event in [e for waiters in self._waiters.values() for e in waiters]:
                    event.set()  # messages sent while it was away are lost: every pick-up checks again
                while True:
                    # The timeout lets redis-py send its health-check PING on an idle connection.
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=FALLBACK)
                    if message is None:
                        continue
                    if message["channel"] == self._done_channel:
                        self._wake(message["data"])
                    else:
                        self._pending.pop(message["data"], None)
            except Exception as exc:  # the loop must live: without it pick-ups only poll (FALLBACK)
                if not failing:
                    log.warning("deferred_subscriber_lost error=%s", type(exc).__name__)
                    failing = True
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RESUBSCRIBE)

    async def close(self) -> None:
        self._closed = True
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.wait([self._subscriber])
            self._subscriber = None
        self._pending.clear()
        if self._owned:
            await disconnect(self.client, self._sentinel)

    def __len__(self) -> int:
        """Tokens this process opened that are still pending (as far as it knows)."""
        return len(self._pending)


__all__ = ["FALLBACK", "RedisDeferred"]
