"""The JS session client (static/session-client.js), served to chat widgets at `client.path`."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import hdrs, web

from gateway.config import ClientConfig

CONTENT_TYPE = "text/javascript; charset=utf-8"  # RFC 9239: the one JavaScript media type


def client_script() -> bytes:
    """session-client.js as shipped in the package."""
    return resources.files("gateway").joinpath("static/session-client.js").read_bytes()


def client_handler(config: ClientConfig) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET/HEAD handler for the client: cacheable for `max_age`, then revalidated by ETag."""
    body = client_script()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        hdrs.CACHE_CONTROL: f"public, max-age={config.max_age}",
        hdrs.ETAG: etag,
        "X-Content-Type-Options": "nosniff",
        # A public script: any page may import it as a module (a CORS fetch). With cors.allow_origins set,
        # the CORS hook replaces this with its own decision for the request's origin.
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
    }

    async def handle(request: web.Request) -> web.Response:
        if etag in (tag.strip() for tag in request.headers.get(hdrs.IF_NONE_MATCH, "").split(",")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers={**headers, hdrs.CONTENT_TYPE: CONTENT_TYPE})

    return handle
