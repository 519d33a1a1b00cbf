"""The gateway's front end and upstream pool with the session layer taken out: what the gateway would serve
if it only forwarded. Proxy.handle is replaced by a bare forward (hop-by-hop fields stripped both ways,
nothing else): no sessions, metrics, CORS, X-Forwarded-* or access log. Not a product; the bench's paired
rounds compare the gateway with it, to show what the session layer costs per request.

    PYTHONPATH=. GATEWAY_LISTEN_PORT=... GATEWAY_UPSTREAM_URL=... python bench/bare_gateway.py
"""

from __future__ import annotations

from gateway import cli
from gateway.edge.messages import Incoming, NewStream, Whole
from gateway.upstream.headers import REQUEST_ONLY_DROP, strip_hop_by_hop
from gateway.upstream.proxy import Proxy


async def bare_handle(self: Proxy, request: Incoming, new_stream: NewStream | None = None) -> Whole:
    """Forward a small request and read the small answer whole (the bench's backend sends 204 bytes)."""
    replica = self.upstreams.replicas[0]
    headers = strip_hop_by_hop(request.headers, REQUEST_ONLY_DROP)  # Cookie and all else go on as sent
    upstream = await self.pool.request(replica.origin, request.method, request.raw_path, headers, None)
    try:
        length = upstream.content_length or 0
        body = await upstream.content.readexactly(length) if length else b""
        return Whole(upstream.status, upstream.reason, strip_hop_by_hop(upstream.headers), body)
    finally:
        upstream.release()


if __name__ == "__main__":
    Proxy.handle = bare_handle  # type: ignore[method-assign,assignment]
    cli.main(["serve"])
