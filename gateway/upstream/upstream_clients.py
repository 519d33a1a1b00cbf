"""The gateway's two HTTP clients to the bots, built from upstream.*: its own pool (upstream_client.py) for
every proxied request, and aiohttp's for WebSocket upgrades and the readiness probe."""

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
    """aiohttp's client, for WebSocket upgrades and the readiness probe only."""
    up = config.upstream
    connector = aiohttp.TCPConnector(limit=up.pool_size, keepalive_timeout=up.keepalive_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        # The upstream's cookies belong to the client, never to the gateway nor to another user.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Compressed bodies pass through byte-exact with their Content-Encoding.
        auto_decompress=False,
        # total=None: a chat stream may last minutes; sock_read is the silence allowed between bytes.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=up.connect_timeout, sock_read=up.read_timeout),
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
        raise_for_status=False,
        trust_env=False,
    )
