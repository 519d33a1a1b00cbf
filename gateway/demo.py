"""A Teneo-style demo bot, and `session-gateway demo` which runs it behind the gateway."""

from __future__ import annotations

import dataclasses
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.config import Config
from gateway.server import bound_addresses, serve

COOKIE = "JSESSIONID"
END_SEGMENT = "endsession"
Clock = Callable[[], float]


@dataclass(slots=True)
class BotSession:
    turn: int = 0
    last_seen: float = 0.0


@dataclass(slots=True)
class DemoBot:
    """The engine's state: sessions by id, expired after `idle_timeout` seconds like the Teneo engine's."""

    idle_timeout: float = 600.0
    clock: Clock = time.monotonic
    sessions: dict[str, BotSession] = dataclasses.field(default_factory=dict)
    requests: int = 0

    def lookup(self, session_id: str | None) -> BotSession | None:
        if not session_id or session_id not in self.sessions:
            return None
        session = self.sessions[session_id]
        if self.clock() - session.last_seen > self.idle_timeout:
            del self.sessions[session_id]
            return None
        return session

    def purge(self) -> None:
        now = self.clock()
        for key in [k for k, s in self.sessions.items() if now - s.last_seen > self.idle_timeout]:
            del self.sessions[key]


def teneo_answer(text: str, reply: str, session_id: str, turn: int, extra: dict[str, str]) -> dict[str, Any]:
    """The Teneo engine's response shape (status 0 = success)."""
    return {
        "status": 0,
        "input": {"text": text, "parameters": {}},
        "output": {"text": reply, "emotion": "", "link": "", "parameters": {"turn": str(turn), **extra}},
        "sessionId": session_id,
    }


def create_bot_app(*, idle_timeout: float = 600.0, clock: Clock = time.monotonic) -> web.Application:
    """The demo bot: `userinput` on any path, JSESSIONID cookie sessions, `<path>/endsession`."""
    bot = DemoBot(idle_timeout=idle_timeout, clock=clock)

    async def handle(request: web.Request) -> web.Response:
        bot.requests += 1
        if bot.requests % 1000 == 0:
            bot.purge()
        session_id = request.cookies.get(COOKIE)
        if request.path.rstrip("/").rsplit("/", 1)[-1] == END_SEGMENT:
            if request.method != "POST":
                raise web.HTTPMethodNotAllowed(request.method, ["POST"])
            if bot.lookup(session_id) is not None:
                del bot.sessions[session_id]  # type: ignore[arg-type]
            return web.json_response({"status": 1, "message": "logout"})
        params: dict[str, str] = dict(request.query)
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        text = params.get("userinput", "")
        session = bot.lookup(session_id)
        headers = {}
        if session is None:
            session_id = secrets.token_hex(16).upper()
            session = bot.sessions[session_id] = BotSession()
            headers["Set-Cookie"] = f"{COOKIE}={session_id}; Path=/; HttpOnly"
        assert session_id is not None
        session.turn += 1
        session.last_seen = bot.clock()
        reply = f"Hello! You said: {text}" if session.turn == 1 else f"You said: {text}"
        extra = {"gatewaySignal": request.headers["X-Session-New"]} if "X-Session-New" in request.headers else {}
        return web.json_response(teneo_answer(text, reply, session_id, session.turn, extra), headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def run_demo(config: Config) -> None:
    """Start the demo bot on a free loopback port and the gateway in front of it; run until Ctrl-C."""
    bot_runner = web.AppRunner(create_bot_app(), access_log=None)
    await bot_runner.setup()
    await web.TCPSite(bot_runner, "127.0.0.1", 0).start()
    bot_url = bound_addresses(bot_runner)[0]
    config = dataclasses.replace(config, upstream=dataclasses.replace(config.upstream, url=bot_url))

    async def announce(runner: web.AppRunner, admin: web.AppRunner) -> None:
        gateway = bound_addresses(runner)[0].replace("0.0.0.0", "localhost")
        print(
            f"demo bot:  {bot_url}\n"
            f"gateway:   {gateway}\n"
            f"admin:     {bound_addresses(admin)[0].replace('0.0.0.0', 'localhost')}/metrics\n"
            f"try:       curl -si '{gateway}/?userinput=hi'\n"
            "Ctrl-C stops.",
            file=sys.stderr,
            flush=True,
        )

    try:
        await serve(config, on_started=announce)
    finally:
        await bot_runner.cleanup()
