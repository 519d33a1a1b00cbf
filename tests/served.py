"""Serve a gateway app in tests the way `session-gateway serve` does: through its front end."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.edge.frontend import GatewayRunner


class GatewayTestServer(TestServer):
    """aiohttp's TestServer, listening with the gateway's FrontEnd (aiohttp's server as its fallback)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return GatewayRunner(self.app, **kwargs)
