"""create_app: the proxy application, its resources and routes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.config import Config
from gateway.edge.client import client_handler
from gateway.edge.cors import Cors
from gateway.edge.messages import Incoming, Whole
from gateway.edge.routes import LocalRoutes
from gateway.edge.streams import Streams
from gateway.errors import Handler, error_middleware
from gateway.ops.admin import Readiness, check_upstream_forever, create_admin_app
from gateway.ops.event_delivery import Delivery, RedisStreamSink, Sink, WebhookSink
from gateway.ops.event_feed import Feed
from gateway.ops.events import Emitter, EventQueue, instance_name
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import Clock, SessionManager
from gateway.sessions.store import SessionStore, state_file
from gateway.sessions.store.memory import MemoryStore
from gateway.upstream.deferral import PICKUP_PREFIX, Deferrals
from gateway.upstream.deferred import DeferredStore, MemoryDeferred
from gateway.upstream.proxy import Proxy
from gateway.upstream.upstream_clients import build_client, build_pool, build_probe_client
from gateway.upstream.upstreams import Upstreams

if TYPE_CHECKING:
    from gateway.ops.event_streams import StreamDelivery
    from gateway.ops.stream_feed import StreamFeed

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
READINESS = web.AppKey("readiness", Readiness)
STREAMS = web.AppKey("streams", Streams)
PROXY = web.AppKey("proxy", Proxy)
SESSIONS = web.AppKey("sessions", SessionManager)
CORS = web.AppKey("cors", Cors)
ROUTES = web.AppKey("routes", LocalRoutes)
DEFERRALS = web.AppKey("deferrals", Deferrals)
FEED = web.AppKey("feed", Feed)
DELIVERY = web.AppKey("delivery", Delivery)
# Typed by annotation: event_streams imports redis, which is imported only when the Redis store is configured.
STREAM_DELIVERY: web.AppKey[StreamDelivery] = web.AppKey("stream_delivery")
STREAM_FEED: web.AppKey[StreamFeed] = web.AppKey("stream_feed")


def claim_ttl(config: Config) -> float:
    """How long a request may hold the claim on a dead id: as long as its upstream may take to answer."""
    return config.upstream.connect_timeout + config.upstream.read_timeout


def create_store(config: Config) -> SessionStore:
    """The configured SessionStore backend."""
    s = config.session
    if s.store == "redis":
        from gateway.sessions.store.redis import (  # redis is only imported when configured
            RedisStore,
            StreamEvents,
        )

        events = StreamEvents(
            on=config.events.sink != "none",
            include_id=config.events.include_id,
            retention=config.events.retention,
            gateway=instance_name(config.events),
        )
        return RedisStore(
            s.redis_url,
            absolute_timeout=s.absolute_timeout,
            max_sessions=s.max_sessions,
            on_full=s.on_full,
            tombstone_ttl=s.tombstone_ttl,
            claim_ttl=claim_ttl(config),
            prefix=s.redis_prefix,
            timeout=s.redis_timeout,
            max_connections=s.redis_pool_size,
            sentinels=s.redis_sentinels,
            sentinel_master=s.redis_sentinel_master,
            cluster=s.redis_cluster,
            shards=s.redis_shards,
            events=events,
        )
    return MemoryStore(
        absolute_timeout=s.absolute_timeout,
        max_sessions=s.max_sessions,
        on_full=s.on_full,
        tombstone_ttl=s.tombstone_ttl,
        max_tombstones=s.max_tombstones,
        claim_ttl=claim_ttl(config),
    )


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    store: SessionStore | None = None,
    clock: Clock = time.time,
) -> web.Application:
    """The proxy app; `registry`, `store` and `clock` are injected so tests control them."""
    handler_args = {
        "auto_decompress": False,  # request bodies pass through with their Content-Encoding
        "handler_cancellation": True,  # a client that leaves cancels its handler and so its upstream request
        "access_log": None,  # the proxy writes its own structured line per request
        "max_field_size": config.listen.max_field_size,
        "max_headers": config.listen.max_headers,
    }
    # aiohttp's server only ever gets WebSocket handshakes, handed over by the front end (frontend.py).
    app = web.Application(middlewares=[_one_request, error_middleware], handler_args=handler_args)
    app[CONFIG] = config
    app[METRICS] = Metrics(registry)
    app[READINESS] = Readiness()
    app[STREAMS] = Streams()
    app[FEED] = Feed()
    store = store if store is not None else create_store(config)  # an empty MemoryStore is falsy (len 0)
    emitter = None
    if not store.shared:  # a shared store's scripts write their own events
        queue = _event_queue(config, app[METRICS])
        emitter = Emitter(config.events, queue, app[FEED])  # `at` is wall time, whatever clock sessions use
        if queue is not None:
            app[DELIVERY] = Delivery(config.events, queue, _event_sink(config), app[METRICS])
    else:
        _stream_events(app, config, store)
    app[SESSIONS] = SessionManager(
        config.session,
        store,
        app[METRICS],
        Upstreams(config.upstream, app[METRICS]),
        clock,
        claim_wait=claim_ttl(config),
        strict_affinity=config.upstream.strict_affinity,
        events=emitter,
    )
    app[CORS] = Cors(config.cors, config.session.header)
    app[ROUTES] = LocalRoutes()
    app[DEFERRALS] = _deferrals(config, app[METRICS], app[SESSIONS])
    if app[DEFERRALS].enabled:
        app[ROUTES].add_prefix(PICKUP_PREFIX, app[DEFERRALS].pickup)
    if app[CORS].enabled:  # a hook on every response costs even when it does nothing
        app.on_response_prepare.append(app[CORS].on_response_prepare)
    app.cleanup_ctx.append(_events)
    app.cleanup_ctx.append(_sessions)
    app.cleanup_ctx.append(_event_streams)  # after the store opens, and stopped before it closes
    app.cleanup_ctx.append(_upstream)
    app.on_shutdown.append(_close_streams)

    async def handle(request: web.Request) -> web.StreamResponse:
        response = await app[PROXY].handle(request)
        if isinstance(response, Whole):
            return web.Response(
                status=response.status, reason=response.reason, headers=response.headers, body=response.body
            )
        assert isinstance(response, web.StreamResponse)  # aiohttp's own streams on aiohttp's requests
        return response

    if config.client.enabled:
        app[ROUTES].add(config.client.path, client_handler(config.client))
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _deferrals(config: Config, metrics: Metrics, sessions: SessionManager) -> Deferrals:
    """Deferred answers, kept where the sessions are: in process, or in the shared Redis."""
    d = config.deferred
    store: DeferredStore
    if config.session.store == "redis" and d.after > 0:
        from gateway.sessions.store.redis_deferred import RedisDeferred

        store = RedisDeferred.for_config(config, on_expired=metrics.deferred["expired"].inc)
    else:
        store = MemoryDeferred(d.max_pending, on_expired=metrics.deferred["expired"].inc)
    cap = config.upstream.max_response_size or d.max_answer

    def carried_session(request: Incoming) -> str | None:
        return sessions.extract(request.raw_path, request.headers).session_id

    return Deferrals(d, store, metrics, cap, carried_session)


def admin_app_for(app: web.Application) -> web.Application:
    """The admin app sharing `app`'s metrics and readiness, and its lifecycle events (GET /events)."""
    admin = create_admin_app(app[CONFIG], app[METRICS], app[READINESS], app[SESSIONS])
    admin.router.add_get("/events", app[FEED].handle)
    return admin


@web.middleware
async def _one_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A handshake the bot refused ends its connection: the front end, not aiohttp, serves HTTP here."""
    response = await handler(request)
    response.force_close()
    return response


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    """Open the pooled upstream client and the readiness checker; close both on cleanup."""
    client = build_client(app[CONFIG])
    pool = build_pool(app[CONFIG], app[METRICS])
    app[PROXY] = Proxy(
        app[CONFIG], client, pool, app[METRICS], app[STREAMS], app[SESSIONS], app[CORS], app[DEFERRALS]
    )
    probe_client = build_probe_client(app[CONFIG])
    checker = asyncio.create_task(check_upstream_forever(app[CONFIG], probe_client, app[READINESS]))
    yield
    # Deferred exchanges ran beside the drain; what is left of listen.shutdown_timeout is theirs to finish.
    deferrals = app[DEFERRALS]
    spent = time.monotonic() - (deferrals.shutdown_began or time.monotonic())
    await deferrals.close(max(0.0, app[CONFIG].listen.shutdown_timeout - spent))
    checker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await checker
    await pool.close()
    await client.close()
    await probe_client.close()


async def _events(app: web.Application) -> AsyncIterator[None]:
    """Deliver lifecycle events from start to the end of shutdown (cleaned up last: the sessions' last events
    are in the queue by then), flushing within what is left of listen.shutdown_timeout."""
    delivery = app.get(DELIVERY)
    if delivery is not None:
        delivery.start()
    yield
    if delivery is not None:
        began = app[DEFERRALS].shutdown_began
        spent = time.monotonic() - began if began is not None else 0.0
        await delivery.close(max(1.0, app[CONFIG].listen.shutdown_timeout - spent))


def _stream_events(app: web.Application, config: Config, store: SessionStore) -> None:
    """The Redis store's events: its scripts write them, the replicas' consumer group delivers the webhook's,
    and the admin feed reads them while someone watches."""
    from gateway.ops.event_streams import StreamDelivery
    from gateway.ops.stream_feed import StreamFeed
    from gateway.sessions.store.redis import RedisStore

    if config.events.sink == "none" or not isinstance(store, RedisStore):
        return
    # The store's client has no socket timeout: every call of these is bounded, at least a second.
    timeout = max(1.0, config.session.redis_timeout)
    if config.events.sink == "webhook":
        sink = WebhookSink(config.events)
        streams = store.event_streams
        app[STREAM_DELIVERY] = StreamDelivery(
            store.client, streams, store.event_members, config.events, sink, app[METRICS], timeout
        )
    app[STREAM_FEED] = StreamFeed(
        store.client, store.event_streams, app[FEED], config.events.include_id, timeout
    )


async def _event_streams(app: web.Application) -> AsyncIterator[None]:
    """Deliver the Redis store's events while the store is open. What is unacknowledged at the end stays in
    the streams, for another replica now (the leases are handed back) or this one when it starts again."""
    delivery, feed = app.get(STREAM_DELIVERY), app.get(STREAM_FEED)
    for part in (delivery, feed):
        if part is not None:
            part.start()
    yield
    if feed is not None:
        await feed.close()
    if delivery is not None:
        began = app[DEFERRALS].shutdown_began
        spent = time.monotonic() - began if began is not None else 0.0
        await delivery.close(max(1.0, app[CONFIG].listen.shutdown_timeout - spent))


def _event_queue(config: Config, metrics: Metrics) -> EventQueue | None:
    if config.events.sink == "none":
        return None

    def dropped(kind: str) -> None:
        metrics.events.labels(type=kind, outcome="dropped").inc()

    return EventQueue(config.events.max_queue, dropped)


def _event_sink(config: Config) -> Sink:
    if config.events.sink == "webhook":
        return WebhookSink(config.events)
    return RedisStreamSink(config.events, config.session.redis_url, config.session.redis_timeout)


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    """Restore the sessions a graceful shutdown saved (session.state_file), sweep; on cleanup, which runs
    after the proxy drained its requests, save them again and close the store."""
    manager, path = app[SESSIONS], app[CONFIG].session.state_file
    store = manager.store if path and isinstance(manager.store, MemoryStore) else None
    if store is not None:
        bound = state_file.size_bound(app[CONFIG].session)
        await manager.restore(await state_file.load(store, path, manager.clock(), bound))
    manager.start()
    yield
    await manager.stop(None if store is None else lambda: state_file.save(store, path, manager.clock()))


async def _close_streams(app: web.Application) -> None:
    app[DEFERRALS].shutdown_began = time.monotonic()
    app[READINESS].shutting_down = True
    await app[STREAMS].close_all()
