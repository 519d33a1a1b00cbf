"""The JS session client (static/session-client.js), served to chat widgets at `client.path`."""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import hdrs
from multidict import CIMultiDict

from gateway.config import ClientConfig
from gateway.edge.messages import Incoming, Whole
from gateway.edge.routes import Page

CONTENT_TYPE = "text/javascript; charset=utf-8"  # RFC 9239: the one JavaScript media type


def client_script() -> bytes:
    """session-client.js as shipped in the package."""
    return resources.files("gateway").joinpath("static/session-client.js").read_bytes()


def client_handler(config: ClientConfig) -> Page:
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

    async def handle(tail: str, request: Incoming) -> Whole:
        if etag in (tag.strip() for tag in request.headers.get(hdrs.IF_NONE_MATCH, "").split(",")):
            return Whole(304, "", CIMultiDict(headers), b"")
        return Whole(200, "", CIMultiDict({**headers, hdrs.CONTENT_TYPE: CONTENT_TYPE}), body)

    return handle
