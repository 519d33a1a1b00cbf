"""The thirty-line aiohttp proxy everyone writes: the baseline the gateway is compared with."""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "content-length", "host"}


def main(port: int, upstream: str) -> None:
    async def on_startup(app: web.Application) -> None:
        app["client"] = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())

    async def on_cleanup(app: web.Application) -> None:
        await app["client"].close()

    async def handle(request: web.Request) -> web.Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
        async with request.app["client"].request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as r:
            body = await r.read()
            out = [(k, v) for k, v in r.headers.items() if k.lower() not in HOP]
            return web.Response(status=r.status, body=body, headers=out)

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
