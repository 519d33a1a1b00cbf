"""CORS for chat widgets embedded on other sites: the gateway answers preflights and decorates responses."""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web

from gateway.config import CorsConfig
from gateway.edge.messages import Incoming, Outgoing, Whole
from gateway.errors import error_response

EXPOSED: Final = "X-Gateway-Session, X-Session-Id, X-Session-New, X-Session-Deferred"


class Cors:
    """With allow_origins set the gateway owns CORS: the bot's own Access-Control-* headers are replaced."""

    def __init__(self, config: CorsConfig, session_header: str) -> None:
        self.enabled = bool(config.allow_origins)
        self._any = config.allow_origins == ("*",)
        self._origins = frozenset(config.allow_origins)
        self._allow_headers = ", ".join(
            dict.fromkeys(["Content-Type", session_header, *config.allow_headers])
        )
        self._max_age = str(config.max_age)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and (self._any or origin in self._origins)

    @staticmethod
    def is_preflight(request: Incoming) -> bool:
        return (
            request.method == hdrs.METH_OPTIONS
            and hdrs.ORIGIN in request.headers
            and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
        )

    def preflight(self, request: Incoming) -> web.Response | None:
        """The answer to a preflight (never forwarded), or None when this is no preflight or CORS is off."""
        if not self.enabled or not self.is_preflight(request):
            return None
        if not self.allowed(request.headers.get(hdrs.ORIGIN)):
            return error_response(403, "cors_origin_not_allowed", "This origin may not call the gateway.")
        return web.Response(status=204)

    async def on_response_prepare(
        self, request: Incoming, response: web.StreamResponse | Outgoing | Whole
    ) -> None:
        """Every response, errors and streams included, gets its CORS headers just before they go out."""
        if not self.enabled:
            return
        headers = response.headers
        for name in [n for n in headers if n.lower().startswith("access-control-")]:
            headers.popall(name, None)
        vary = headers.get(hdrs.VARY, "")
        if "origin" not in vary.lower():
            headers[hdrs.VARY] = f"{vary}, Origin" if vary else "Origin"
        origin = request.headers.get(hdrs.ORIGIN)
        if not self.allowed(origin):
            return
        assert origin is not None
        headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*" if self._any else origin
        if not self._any:
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        if self.is_preflight(request) and response.status == 204:
            headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD]
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = self._allow_headers
            headers[hdrs.ACCESS_CONTROL_MAX_AGE] = self._max_age
        else:
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED
