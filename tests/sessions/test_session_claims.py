"""SessionManager's claims and successors against the real stores: what a conversation's next request sees
after its session ended, its client left mid-request, or the store failed half way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from gateway_helpers import make_config
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry
from redis_server import RedisServer

from gateway.errors import StoreUnavailable
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import SessionManager
from gateway.sessions.store import Outcome, SessionStore
from gateway.sessions.store.memory import MemoryStore
from gateway.sessions.store.redis import RedisStore
from gateway.upstream.upstreams import Upstreams

IDLE = 600.0
ABSOLUTE = 3600.0

StoreFactory = Callable[..., SessionStore]
# Either store's options; the Redis store uses one shard.
STORE_OPTIONS: dict[str, Any] = {
    "absolute_timeout": ABSOLUTE,
    "max_sessions": 1000,
    "on_full": "evict",
    "tombstone_ttl": 7200.0,
}


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    made: list[SessionStore] = []
    server: RedisServer | None = request.getfixturevalue("redis") if request.param == "redis" else None

    def factory() -> SessionStore:
        if server is None:
            store: SessionStore = MemoryStore(max_tombstones=1000, **STORE_OPTIONS)
        else:
            store = RedisStore(server.url, shards=1, **STORE_OPTIONS)
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()


async def _expired_session_manager(
    redis: RedisServer, url: str | None = None, store_class: type[RedisStore] = RedisStore, **session: object
) -> tuple[SessionManager, RedisStore, list[float], str]:
    """A gateway-issued SessionManager over Redis whose one session is past its idle timeout."""
    config = make_config("http://127.0.0.1:9", session={"issuer": "gateway", "store": "redis", **session})
    s = config.session
    store = store_class(
        url or redis.url,
        absolute_timeout=s.absolute_timeout,
        max_sessions=100,
        on_full="evict",
        tombstone_ttl=s.tombstone_ttl,
        claim_ttl=1.0,  # the app passes claim_wait = claim_ttl (connect + read timeout: 125 s by default)
        shards=1,
        timeout=s.redis_timeout,
    )
    now = [1000.0]
    metrics = Metrics(CollectorRegistry())
    manager = SessionManager(
        s, store, metrics, Upstreams(config.upstream, metrics), clock=lambda: now[0], claim_wait=1.0
    )
    await store.create("old", now[0], idle_timeout=s.idle_timeout, replica=manager.upstreams.replicas[0].name)
    await store.touch("old", now[0])  # loads the touch script
    now[0] += s.idle_timeout + 1
    return manager, store, now, "JSESSIONID=old"


def _headers(cookie: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Cookie": cookie}))


async def _next_request_starts_at_once(manager: SessionManager, cookie: str) -> None:
    """The conversation's next request meets no claim (none left behind) and starts the expired one's successor."""
    started = time.monotonic()
    retry = await manager.prepare("/", _headers(cookie))
    waited = time.monotonic() - started
    assert waited < 0.5, f"the next request waited {waited:.1f} s on a claim nobody holds"
    assert (retry.reason, retry.previous) == ("expired", "old")


# --- successors --------------------------------------------------------------------------------------------


def _manager(store: SessionStore, *, claim_wait: float = 30.0, **session: object) -> SessionManager:
    config = make_config("http://127.0.0.1:9", session=session)
    metrics = Metrics(CollectorRegistry())
    upstreams = Upstreams(config.upstream, metrics)
    return SessionManager(
        config.session, store, metrics, upstreams, clock=lambda: 50.0, claim_wait=claim_wait
    )


async def _chain(store: SessionStore, manager: SessionManager, ids: str) -> None:
    """Sessions one after the other, each the successor of the one before; all ended but the last."""
    replica = manager.upstreams.replicas[0].name
    previous = None
    for i, sid in enumerate(ids):
        await store.create(sid, 10.0 + i, idle_timeout=IDLE, replica=replica, previous=previous)
        if sid != ids[-1]:
            await store.end(sid, 10.5 + i, "client")
        previous = sid


async def test_a_stale_id_follows_three_successors_to_the_live_session(make_store: StoreFactory) -> None:
    """a -> b -> c -> d, d live: a tab still holding "a" joins d. (It used to stop one hop short, start a new
    session and record it as the successor of d, a session still live in another tab.)"""
    store = make_store()
    manager = _manager(store, issuer="gateway")
    await _chain(store, manager, "abcd")
    turn = await manager.prepare("/", _headers("JSESSIONID=a"))
    assert (turn.live, turn.session_id, turn.reason) == (True, "d", None)


async def test_a_successor_chain_longer_than_followed_starts_afresh_claiming_nothing(
    make_store: StoreFactory,
) -> None:
    """a -> b -> c -> d -> e: a tab holding "a" is too far behind to follow. It starts a new conversation,
    recorded as nobody's successor ("d" already has one), and holds no claim."""
    store = make_store()
    manager = _manager(store, issuer="gateway")
    await _chain(store, manager, "abcde")
    turn = await manager.prepare("/", _headers("JSESSIONID=a"))
    assert (turn.live, turn.reason, turn.previous, turn.claimed) == (False, "unknown", None, None)
    assert turn.session_id not in (None, *"abcde")
    assert (await store.touch("d", 51.0)).successor == "e"


# --- claims after a failure --------------------------------------------------------------------------------


class _PausedCreate(RedisStore):
    """The next create() meets a Redis that holds writes for 260 ms (longer than redis_timeout = 0.2 s; a
    release sent after the timeout still runs within its own)."""

    pause_with: aioredis.Redis | None = None

    async def create(self, session_id: str, now: float, **options: object) -> Any:
        if self.pause_with is not None:
            admin, self.pause_with = self.pause_with, None
            await admin.execute_command("CLIENT", "PAUSE", "260", "WRITE")  # type: ignore[no-untyped-call]
        return await super().create(session_id, now, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_a_store_failure_after_the_claim_was_taken_releases_it(redis: RedisServer, policy: str) -> None:
    """prepare() took the claim on the expired id (touch answered EXPIRED), then creating the successor failed
    (a Redis hiccup: the create times out and never runs). The claim is released, so the conversation's next
    request does not wait it out (claim_wait = claim_ttl: 125 s by default; 1 s here)."""
    manager, store, _now, cookie = await _expired_session_manager(
        redis, store_class=_PausedCreate, redis_timeout=0.2, store_failure=policy
    )
    assert isinstance(store, _PausedCreate)
    admin = aioredis.Redis.from_url(redis.url)
    try:
        store.pause_with = admin
        if policy == "open":
            assert (await manager.prepare("/", _headers(cookie))).untracked
        else:
            with pytest.raises(StoreUnavailable):
                await manager.prepare("/", _headers(cookie))
        await asyncio.sleep(0.5)  # Redis answers again
        await _next_request_starts_at_once(manager, cookie)
    finally:
        await admin.aclose()
        await store.close()


async def test_a_request_cancelled_while_its_touch_is_in_flight_leaves_no_claim(redis: RedisServer) -> None:
    """The client leaves (handler cancellation) after the batched touch was sent. The script still runs and
    claims the expired id; the store releases the claim nobody holds, so the client's retry does not wait it
    out. (The memory store cannot be cancelled inside touch().)"""
    manager, store, _now, cookie = await _expired_session_manager(redis)
    admin = aioredis.Redis.from_url(redis.url)
    try:
        # Holds the script sent next for a moment.
        await admin.execute_command("CLIENT", "PAUSE", "300", "WRITE")  # type: ignore[no-untyped-call]
        leaving = asyncio.create_task(manager.prepare("/", _headers(cookie)))
        await asyncio.sleep(0.1)  # the touch is sent and waits in the server
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await asyncio.sleep(0.4)  # the pause ends: the server runs the touch
        await _next_request_starts_at_once(manager, cookie)
    finally:
        await admin.aclose()
        await store.close()


async def test_a_request_cancelled_in_the_turn_its_touch_answered_leaves_no_claim(redis: RedisServer) -> None:
    """The touch's reply is handed out and, in the same loop turn, the client's disconnect cancels the request:
    touch() never returns, so the request has no claim to abandon, though the touch took one. The store
    disowns it, and the conversation's next request does not wait it out."""
    manager, store, now, cookie = await _expired_session_manager(redis)
    try:
        other = asyncio.create_task(store.touch("someone-else", now[0]))
        leaving = asyncio.create_task(manager.prepare("/", _headers(cookie)))
        await asyncio.sleep(0)  # both touches queued in one batch, the other first
        pending = store._touch_batch._pending
        assert len(pending) == 2
        pending[0][2].add_done_callback(lambda _: leaving.cancel())  # the disconnect, in that turn
        await other
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await asyncio.sleep(0.2)  # the disowning has run
        await _next_request_starts_at_once(manager, cookie)
    finally:
        await store.close()


class _SlowLink:
    """A TCP relay in front of redis-server that can delay either way (a latency spike): the server's replies
    arrive `delay` seconds late, or the next command sent reaches the server `hold_next_command` seconds late
    (while commands sent after it on other connections go through at once)."""

    def __init__(self, target: RedisServer) -> None:
        self.target = target
        self.delay = 0.0
        self.hold_next_command = 0.0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target.port)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if slow and self.delay:
                        await asyncio.sleep(self.delay)
                    elif not slow and self.hold_next_command:
                        held, self.hold_next_command = self.hold_next_command, 0.0
                        await asyncio.sleep(held)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_r, server_w, False), pipe(server_r, client_w, True))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_touch_that_timed_out_but_ran_leaves_no_claim(redis: RedisServer) -> None:
    """The same orphaned claim after a latency spike: the touch's reply comes after redis_timeout, so the
    request is proxied untracked (store_failure = open), but the script ran and claimed the expired id. The
    store disowns the claim by the touch's owner token, so the next request does not wait it out (125 s by
    default; 1 s here)."""
    relay = _SlowLink(redis)
    await relay.start()
    manager, store, _now, cookie = await _expired_session_manager(redis, redis_timeout=0.2, url=relay.url)
    try:
        relay.delay = 0.4
        first = await manager.prepare("/", _headers(cookie))
        assert first.untracked  # fail open: the store answered too late
        relay.delay = 0.0
        await asyncio.sleep(0.5)
        await _next_request_starts_at_once(manager, cookie)
    finally:
        await store.close()
        await relay.close()


async def test_a_request_that_waited_out_anothers_claim_does_not_release_it() -> None:
    """Another request holds the claim on a dead id for longer than claim_wait (its bot is slow). The waiting
    request goes on without the claim, and when it finishes it leaves the holder's claim alone."""
    store = MemoryStore(
        absolute_timeout=ABSOLUTE, max_sessions=100, on_full="evict", tombstone_ttl=7200.0, max_tombstones=100
    )
    manager = _manager(store, claim_wait=0.1)
    await store.create("dead", 10.0, idle_timeout=IDLE, replica=manager.upstreams.replicas[0].name)
    await store.end("dead", 11.0, "client")
    assert (await store.touch("dead", 49.0)).outcome is Outcome.ENDED  # the holder's request claims it
    waiter = await manager.prepare("/", _headers("JSESSIONID=dead"))
    assert waiter.claimed is None
    await manager.abandon(waiter)  # what finish() does whatever the bot answered
    assert (await store.touch("dead", 51.0)).outcome is Outcome.PENDING  # still the holder's


async def test_a_touch_that_reaches_the_server_after_its_request_gave_up_claims_nothing(
    redis: RedisServer,
) -> None:
    """The spike is on the way in: the touch is held in the network past redis_timeout, the store disowns it
    (that call overtakes it on another connection), then the touch runs. It finds the word its disowning left
    and claims nothing."""
    relay = _SlowLink(redis)
    await relay.start()
    manager, store, _now, cookie = await _expired_session_manager(redis, redis_timeout=0.2, url=relay.url)
    admin = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:
        relay.hold_next_command = 0.5
        first = await manager.prepare("/", _headers(cookie))
        assert first.untracked
        await asyncio.sleep(0.6)  # the held touch has run: it ended the expired session
        [tombstone] = await admin.keys("*:t:*")
        [disowned] = await admin.keys("*:v:*")  # the disowning came first
        assert await admin.hgetall(tombstone) == {"r": "idle"}  # and the touch took no claim
        assert await admin.pttl(disowned) > 0
        await _next_request_starts_at_once(manager, cookie)
    finally:
        await admin.aclose()
        await store.close()
        await relay.close()


async def test_disowning_a_lost_touch_never_frees_another_requests_claim(redis: RedisServer) -> None:
    """A request's touch times out and its store disowns it, while the claim on the id belongs to another
    request (here: another replica's store). That claim stays: the racing request still waits for it."""
    relay = _SlowLink(redis)
    await relay.start()
    manager, store, now, cookie = await _expired_session_manager(redis, redis_timeout=0.2, url=relay.url)
    other = RedisStore(redis.url, shards=1, claim_ttl=30.0, **STORE_OPTIONS)
    try:
        assert (await other.touch("old", now[0])).outcome is Outcome.EXPIRED  # the other replica claims it
        relay.delay = 0.4
        assert (await manager.prepare("/", _headers(cookie))).untracked
        relay.delay = 0.0
        await asyncio.sleep(0.5)
        assert (await store.touch("old", now[0])).outcome is Outcome.PENDING  # still the other's
    finally:
        await other.close()
        await store.close()
        await relay.close()
