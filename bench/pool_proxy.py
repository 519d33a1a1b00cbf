"""bench/plain_proxy.py with the gateway's upstream pool (gateway/upstream/upstream_client.py) in place of aiohttp's
client, nothing else changed: what the hand-written pool saves. Run by bench/justify.py."""

from __future__ import annotations

import sys

from aiohttp import web
from multidict import CIMultiDict

from bench.plain_proxy import HOP
from gateway.upstream.upstream_client import Origin, Pool

POOL = web.AppKey("pool", Pool)


def main(port: int, upstream: str) -> None:
    origin = Origin(upstream)

    async def on_startup(app: web.Application) -> None:
        app[POOL] = Pool(limit=100, keepalive_timeout=60, connect_timeout=5, read_timeout=30)

    async def on_cleanup(app: web.Application) -> None:
        await app[POOL].close()

    async def handle(request: web.Request) -> web.Response:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP)
        body = await request.read()
        r = await request.app[POOL].request(origin, request.method, request.raw_path, headers, body or None)
        try:
            data = await r.content.readexactly(r.content_length or 0)
        finally:
            r.release()
        out = [(k, v) for k, v in r.headers.items() if k.lower() not in HOP]
        return web.Response(status=r.status, body=data, headers=out)

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
