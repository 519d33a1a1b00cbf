"""A fixed JSON answer from aiohttp's server or from a bare asyncio protocol with httptools (both on uvloop):
what the gateway's front end saves over aiohttp's server machinery. Run by bench/justify.py."""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop
from aiohttp import web

BODY = b'{"status": 0, "output": {"text": "hi"}}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
    len(BODY),
    BODY,
)


class Hello(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def protocol_server(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Hello, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


def main(kind: str, port: int) -> None:
    if kind == "protocol":
        uvloop.run(protocol_server(port))
        return

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
