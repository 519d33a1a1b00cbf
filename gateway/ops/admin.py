"""The admin app, on a port of its own: probes (/livez, /readyz), /metrics, and the operators' session API."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config import Config
from gateway.errors import BadRequest, Handler, Unauthorized, error_middleware, error_response
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import SessionManager, short_id
from gateway.sessions.store import SessionView

log = logging.getLogger("gateway")

OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics"})  # probes and scrapers never need admin.token
PAGE_DEFAULT = 100  # sessions per page of GET /sessions
PAGE_MAX = 1000


@dataclass(slots=True)
class Readiness:
    """The cached answer of /readyz: the last upstream check, and whether we are shutting down."""

    upstream_ok: bool = False
    checked_at: float = 0.0  # time.monotonic() of the last check
    reason: str = "the upstream has not been checked yet"
    shutting_down: bool = False

    def verdict(self, max_age: float, now: float) -> tuple[bool, str]:
        if self.shutting_down:
            return False, "the gateway is shutting down"
        if not self.upstream_ok:
            return False, self.reason
        if now - self.checked_at > max_age:
            return False, "the last upstream check is stale"
        return True, "ok"


async def probe_upstream(config: Config, client: aiohttp.ClientSession) -> None:
    """One reachability check; raises on failure.

    With `upstream.ready_path` empty (the default) a TCP connect is the check: an HTTP probe would open
    a conversation in bots such as the Teneo engine every few seconds and fill their analytics.
    """
    up = config.upstream
    timeout = min(up.connect_timeout, config.admin.ready_check_interval)
    failure: BaseException | None = None
    for _, url in up.replicas():  # ready while any replica answers
        try:
            if up.ready_path:
                async with client.get(
                    url.rstrip("/") + up.ready_path,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False,
                ) as response:
                    await response.read()
                return
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that lands as the
            # connection completes, and the checker then outlives the app's cleanup, which waits for it forever.
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(parts.hostname, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = exc
    assert failure is not None
    raise failure


async def check_upstream_forever(config: Config, client: aiohttp.ClientSession, readiness: Readiness) -> None:
    """Probe the upstream every admin.ready_check_interval and cache the answer for /readyz."""
    while True:
        try:
            await probe_upstream(config, client)
            if not readiness.upstream_ok:
                log.info("upstream reachable at %s", config.upstream.base)
            readiness.upstream_ok = True
            readiness.reason = "ok"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if readiness.upstream_ok or readiness.checked_at == 0.0:
                log.warning("upstream unreachable at %s: %s", config.upstream.base, type(exc).__name__)
            readiness.upstream_ok = False
            readiness.reason = f"the upstream did not answer ({type(exc).__name__})"
        readiness.checked_at = time.monotonic()
        await asyncio.sleep(config.admin.ready_check_interval)


def create_admin_app(
    config: Config, metrics: Metrics, readiness: Readiness, sessions: SessionManager
) -> web.Application:
    """Admin endpoints; they share the proxy app's metrics, readiness and sessions."""
    max_age = 3 * config.admin.ready_check_interval + config.upstream.connect_timeout

    async def livez(request: web.Request) -> web.Response:
        # Answering at all proves the process and its event loop are alive; no dependency is checked.
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready, reason = readiness.verdict(max_age, time.monotonic())
        if ready and config.session.store_failure == "closed" and not sessions.store_healthy:
            ready, reason = False, "the session store is unavailable (store_failure = closed)"
        return web.json_response(
            {"status": "ok" if ready else "unavailable", "reason": reason}, status=200 if ready else 503
        )

    async def metrics_handler(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def list_sessions(request: web.Request) -> web.Response:
        limit = _page_limit(request.query.get("limit"))
        try:
            views, cursor = await sessions.store.page(request.query.get("cursor") or None, limit)
        except ValueError as exc:  # a cursor of another gateway process, of an earlier run, or made up
            raise BadRequest(f"cursor: {exc}; list again without one") from None
        return web.json_response(
            {
                "store": config.session.store,  # "redis": the ids shown are digests (the store keeps no ids)
                "now": sessions.clock(),
                "sessions": [_view_json(view) for view in views],
                "next": cursor,
            }
        )

    async def show_session(request: web.Request) -> web.Response:
        info = await sessions.store.info(request.match_info["session_id"])
        if info is None:
            return error_response(404, "session_not_found", "No live session has this id.")
        deadline = min(info.last_seen + info.idle_timeout, info.created + config.session.absolute_timeout)
        session = {
            "id": short_id(info.id),  # the caller knows the id; responses and what logs them need not
            "started": info.created,
            "last_seen": info.last_seen,
            "idle_timeout": info.idle_timeout,
            "deadline": deadline,
            "requests": info.requests,
            "replica": info.replica,
        }
        return web.json_response({"now": sessions.clock(), "session": session})

    async def end_session(request: web.Request) -> web.Response:
        # An operator ends a conversation (reason "admin"); its next request hears X-Session-New: ended.
        if await sessions.end_by_admin(request.match_info["session_id"]):
            log.info("session %s ended by an operator", short_id(request.match_info["session_id"]))
            return web.Response(status=204)
        return error_response(404, "session_not_found", "No live session has this id.")

    token = config.admin.token
    app = web.Application(middlewares=[error_middleware, *([_bearer_token(token)] if token else [])])
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    # The operators' routes, behind admin.token when it is set. GET /events (the lifecycle events as
    # Server-Sent Events) joins them in app.admin_app_for, which owns the event feed; the token covers it too.
    app.router.add_get("/sessions", list_sessions)
    app.router.add_get("/sessions/{session_id}", show_session)
    app.router.add_delete("/sessions/{session_id}", end_session)
    return app


def _bearer_token(token: str) -> Middleware:
    """Refuse every request but OPEN_PATHS' without `Authorization: Bearer <token>` (RFC 6750)."""
    expected = token.encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            scheme, _, presented = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
            if not presented:
                raise Unauthorized("This endpoint needs Authorization: Bearer <admin.token>.")
            # Compared in constant time: the time taken says nothing about how much of the token matched.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(errors="replace"), expected
            ):
                raise Unauthorized("The bearer token is not admin.token.", invalid=True)
        return await handler(request)

    return require_token


def _page_limit(text: str | None) -> int:
    if text is None:
        return PAGE_DEFAULT
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= PAGE_MAX):
        raise BadRequest(f"limit: expected an integer from 1 to {PAGE_MAX}, got {text!r}")
    return int(text)


def _view_json(view: SessionView) -> dict[str, object]:
    return {
        "id": view.short_id,
        "started": view.created,
        "last_seen": view.last_seen,
        "deadline": view.deadline,
        "requests": view.requests,
        "replica": view.replica,
    }
