"""Run the proxy and admin apps until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.app import READINESS, admin_app_for, create_app
from gateway.config import Config
from gateway.edge.frontend import GatewayRunner
from gateway.edge.listener import GatewaySite

log = logging.getLogger("gateway")


def raise_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (each connection is a descriptor); the new soft limit.

    Why: distributions start services with a soft limit of 1,024, which ~1,000 idle connections exhaust
    long before listen.max_connections (10,000) is reached; nginx asks for the same with worker_rlimit_nofile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def bound_addresses(runner: web.AppRunner) -> list[str]:
    return [f"http://{host}:{port}" for host, port, *_ in runner.addresses]


async def serve(
    config: Config,
    *,
    app: web.Application | None = None,
    on_started: Callable[[web.AppRunner, web.AppRunner], Awaitable[None]] | None = None,
) -> None:
    """Serve until a signal; then /readyz turns 503, listening stops, in-flight requests finish."""
    app = app if app is not None else create_app(config)
    runner = GatewayRunner(app, shutdown_timeout=config.listen.shutdown_timeout)
    admin_runner = web.AppRunner(admin_app_for(app), access_log=None, shutdown_timeout=1.0)
    files = raise_file_limit()
    if files < config.listen.max_connections + 64:
        log.warning(
            "listen.max_connections is %d but only %d file descriptors may be open (RLIMIT_NOFILE)",
            config.listen.max_connections,
            files,
        )
    await runner.setup()
    await admin_runner.setup()
    # Everything built so far lives as long as the process: imports, config, the app, the session store's
    # containers. Frozen, the cyclic GC never traverses it again. Why: a full collection walked all of it,
    # the memory store's dict and heap included: 16-22 ms with 64 sessions, 53-62 ms with 1M. Ordinary
    # traffic makes no cycles, but while the bot is down the 502s' exceptions do, and full collections ran
    # twice a second. Frozen, they took 2-4 ms (measured with gc.callbacks on bench/preloaded_gateway.py).
    gc.collect()  # startup's own cyclic garbage is freed, not frozen
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = GatewaySite(runner, config.listen.host, config.listen.port, backlog=config.listen.backlog)
        await site.start()
        await web.TCPSite(admin_runner, config.admin.host, config.admin.port).start()
        log.info(
            "listening: proxy %s, admin %s, upstream %s (event loop: %s; up to %d connections, %d file "
            "descriptors)",
            " ".join(bound_addresses(runner)),
            " ".join(bound_addresses(admin_runner)),
            config.upstream.base,
            "uvloop, accepting in batches" if site.batched else type(loop).__module__.split(".")[0],
            config.listen.max_connections,
            files,
        )
        if on_started is not None:
            await on_started(runner, admin_runner)
        await stop.wait()
        log.info("shutting down: draining for up to %gs", config.listen.shutdown_timeout)
        app[READINESS].shutting_down = True
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        # Stops the listener, closes streams with "going away" (on_shutdown), waits for in-flight handlers.
        await runner.cleanup()
        await admin_runner.cleanup()
        log.info("stopped")
