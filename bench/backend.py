"""A fixed Teneo-style backend for when nginx is not installed (slower than nginx: the table says which)."""

from __future__ import annotations

import secrets
import sys

from aiohttp import web

BODY = (
    b'{"status": 0, "input": {"text": "hi", "parameters": {}}, "output": {"text": "Hello! You said: hi", '
    b'"emotion": "", "link": "", "parameters": {"turn": "1"}}, "sessionId": "31992FA776A35DABA3291A4EE1031B5F"}'
)


async def handle(request: web.Request) -> web.Response:
    headers = {"Content-Type": "application/json"}
    if "JSESSIONID" not in request.cookies:
        headers["Set-Cookie"] = f"JSESSIONID={secrets.token_hex(16)}; Path=/; HttpOnly"
    return web.Response(body=BODY, headers=headers)


if __name__ == "__main__":
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
