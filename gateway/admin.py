"""The admin app: /livez, /readyz and /metrics, on a port of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config import Config
from gateway.errors import error_middleware, error_response
from gateway.metrics import Metrics
from gateway.sessions import SessionManager, short_id

log = logging.getLogger("gateway")


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

    async def end_session(request: web.Request) -> web.Response:
        # An operator ends a conversation (reason "admin"); its next request hears X-Session-New: ended.
        if await sessions.end_by_admin(request.match_info["session_id"]):
            log.info("session %s ended by an operator", short_id(request.match_info["session_id"]))
            return web.Response(status=204)
        return error_response(404, "session_not_found", "No live session has this id.")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_delete("/sessions/{session_id}", end_session)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
