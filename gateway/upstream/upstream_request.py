"""What the bot is sent for a client's request: the target (origin form, never re-quoted) and the headers
(hop-by-hop and gateway-owned fields stripped, the session's and X-Forwarded-* set)."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import hdrs
from multidict import CIMultiDict

from gateway.edge.messages import Incoming
from gateway.errors import BadRequest
from gateway.sessions.manager import Turn
from gateway.upstream.headers import Network, is_trusted, set_forwarded, strip_hop_by_hop


def request_target(request: Incoming) -> str:
    """The raw request target (path and query, never re-quoted)."""
    target = request.raw_path
    if not target.startswith("/"):
        if target == "*":
            raise BadRequest("The asterisk request target is not supported.")
        # Absolute form (`GET http://other.host/x`): forward its path only, never to that host.
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return target


def upstream_headers(
    request: Incoming, turn: Turn, drop: frozenset[str], trusted: tuple[Network, ...]
) -> CIMultiDict[str]:
    """Request headers for the upstream: hop-by-hop and `drop` stripped, session and X-Forwarded-* set (a
    client's own X-Forwarded-* kept only from a `trusted` peer)."""
    headers = strip_hop_by_hop(request.headers, drop)
    headers.extend(turn.headers)
    peer = request.remote
    set_forwarded(
        headers,
        peer=peer,
        scheme=request.scheme,
        host=request.headers.get(hdrs.HOST),
        trusted=is_trusted(peer, trusted),
    )
    return headers
