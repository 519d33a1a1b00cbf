"""The gateway's HTTP clients to the bots, built from upstream.*: its own pool (upstream_client.py) for every
proxied request, aiohttp's for WebSocket upgrades, and one for the readiness probe."""

from __future__ import annotations

import aiohttp
from aiohttp import hdrs

from gateway.config import Config
from gateway.ops.metrics import Metrics
from gateway.upstream.upstream_client import Pool


def build_pool(config: Config, metrics: Metrics) -> Pool:
    """The proxy's one upstream HTTP client."""
    up = config.upstream
    return Pool(
        limit=up.pool_size,
        keepalive_timeout=up.keepalive_timeout,
        connect_timeout=up.connect_timeout,
        read_timeout=up.read_timeout,
        queue_timeout=up.queue_timeout,
        on_wait=metrics.upstream_queue.observe,
    )


def build_client(config: Config) -> aiohttp.ClientSession:
    """aiohttp's client, for WebSocket upgrades only (the readiness probe has its own: build_probe_client)."""
    up = config.upstream
    # An open WebSocket holds its upstream connection for its whole life: bounded by upstream.pool_size,
    # pool_size sockets made every later handshake wait for a slot with no deadline. Each WebSocket is also
    # a client connection, so listen.max_connections bounds them already; `connect` is the deadline for a
    # slot and the TCP connect together.
    connector = aiohttp.TCPConnector(
        limit=config.listen.max_connections, keepalive_timeout=up.keepalive_timeout
    )
    return aiohttp.ClientSession(
        connector=connector,
        # The upstream's cookies belong to the client, never to the gateway nor to another user.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Compressed bodies pass through byte-exact with their Content-Encoding.
        auto_decompress=False,
        # total=None: a WebSocket may last hours; sock_read is the silence allowed between bytes.
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=up.queue_timeout + up.connect_timeout,
            sock_connect=up.connect_timeout,
            sock_read=up.read_timeout,
        ),
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
        raise_for_status=False,
        trust_env=False,
    )


def build_probe_client(config: Config) -> aiohttp.ClientSession:
    """The readiness probe's client, its connections its own: sharing the WebSockets' connector, the probe
    waited behind them and /readyz said the bot was gone while it served."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=len(config.upstream.replicas()) + 1, force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
        trust_env=False,
    )
