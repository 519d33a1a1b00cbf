"""A Teneo-style demo bot, and `session-gateway demo` which runs it behind the gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import ipaddress
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway.app import ROUTES, create_app
from gateway.config import Config
from gateway.demo_rasa import REST_WEBHOOK, create_rasa_bot_app
from gateway.edge.messages import Incoming, Whole
from gateway.errors import NotFound, error_whole
from gateway.server import bound_addresses, serve

COOKIE = "JSESSIONID"
END_SEGMENT = "endsession"
DEMO_PATH = "/_gateway/demo/"  # the chat widget, served by the gateway process for `session-gateway demo`
_DEMO_FILES = {  # name under DEMO_PATH -> (file under gateway/static, content type)
    "": ("demo/widget.html", "text/html; charset=utf-8"),
    "widget.js": ("demo/widget.js", "text/javascript; charset=utf-8"),
    "widget.css": ("demo/widget.css", "text/css; charset=utf-8"),
    "session-client.js": ("session-client.js", "text/javascript; charset=utf-8"),  # when [client] is off
}
_PAGE_NAME = re.compile(r"[a-z.-]*")
SLOW_COMMAND = "think"  # the demo bot answers it after `slow_seconds` ([demo] slow_seconds)
DEMO_DEFERRED_AFTER = 1.0  # seconds; `session-gateway demo` turns [deferred] on with it unless after is set
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


def create_bot_app(
    *, idle_timeout: float = 600.0, clock: Clock = time.monotonic, slow_seconds: float = 5.0
) -> web.Application:
    """The demo bot: `userinput` on any path, JSESSIONID cookie sessions, `<path>/endsession`; "think" takes
    `slow_seconds` to answer."""
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
        if text.strip().lower() == SLOW_COMMAND:
            await asyncio.sleep(slow_seconds)
            reply = f"I thought about it for {slow_seconds:g} seconds. Done!"
        extra = (
            {"gatewaySignal": request.headers["X-Session-New"]} if "X-Session-New" in request.headers else {}
        )
        return web.json_response(teneo_answer(text, reply, session_id, session.turn, extra), headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _static(name: str) -> str:
    return resources.files("gateway").joinpath("static", name).read_text(encoding="utf-8")


def add_demo_widget(app: web.Application, config: Config) -> None:
    """Serve the demo chat widget under DEMO_PATH from the gateway app (the most specific route wins)."""
    client_url = config.client.path if config.client.enabled else DEMO_PATH + "session-client.js"
    pages = {}
    for name, (path, content_type) in _DEMO_FILES.items():
        text = _static(path)
        if name == "":
            text = text.replace("__CLIENT_URL__", html.escape(client_url))
        pages[name] = (text.encode(), content_type)

    async def handle(name: str, request: Incoming) -> Whole | None:
        if not _PAGE_NAME.fullmatch(name):
            return None  # not a widget file name: the bot's to answer, as any other path
        page = pages.get(name)
        if page is None:
            return error_whole(NotFound("The demo widget has no such file."))
        body, content_type = page
        headers = CIMultiDict({hdrs.CONTENT_TYPE: content_type, hdrs.CACHE_CONTROL: "no-cache"})
        return Whole(200, "", headers, body)

    app[ROUTES].add_prefix(DEMO_PATH, handle)


def create_host_app(widget_url: str, widget_params: Mapping[str, str] | None = None) -> web.Application:
    """The embedding site: one page with the widget twice in iframes (with the session client; cookies only).

    `widget_params` go to both widgets (`bot`, `endpoint`); the page's own query string is passed on to the
    client widget (for example `?endOnPageHide=1`).
    """
    template = _static("demo/host.html")
    parts = urlsplit(widget_url)
    common = list((widget_params or {}).items())

    def url(pairs: list[tuple[str, str]]) -> str:
        return widget_url + (f"?{urlencode(pairs)}" if pairs else "")

    async def handle(request: web.Request) -> web.Response:
        page = (
            template.replace("__WIDGET_ORIGIN__", html.escape(f"{parts.scheme}://{parts.netloc}"))
            .replace("__CLIENT_WIDGET_URL__", html.escape(url([*common, *request.query.items()])))
            .replace("__COOKIES_WIDGET_URL__", html.escape(url([*common, ("mode", "cookies")])))
        )
        return web.Response(text=page, content_type="text/html", headers={hdrs.CACHE_CONTROL: "no-cache"})

    app = web.Application()
    app.router.add_get("/", handle)
    return app


def widget_url_for(gateway_url: str) -> str:
    """The widget's URL on `localhost`: another site than the host page's 127.0.0.1, as for real embeds."""
    parts = urlsplit(gateway_url)
    host = parts.hostname or "localhost"
    try:
        if ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified:
            host = "localhost"
    except ValueError:
        pass  # a name: keep it
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{parts.port}{DEMO_PATH}"


async def _start_host_site(runner: web.AppRunner, port: int) -> str:
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError:  # the preferred port is taken: any free one will do
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    return bound_addresses(runner)[-1]


def demo_config(config: Config, bot: str = "teneo") -> Config:
    """The demo's configuration: for the Teneo bot, [deferred] on (so "think" gets an interim answer the widget
    shows) unless deferred.after is set."""
    if bot == "rasa-rest" or config.deferred.after:
        return config
    deferred = dataclasses.replace(config.deferred, after=DEMO_DEFERRED_AFTER, format="teneo")
    return dataclasses.replace(config, deferred=deferred)


async def run_demo(config: Config, bot: str = "teneo") -> None:
    """Start the demo bot (`teneo`, or `rasa-rest` with session.preset = "rasa-rest") on a free loopback port
    and the gateway in front of it; run until Ctrl-C."""
    rasa = bot == "rasa-rest"
    bot_app = create_rasa_bot_app() if rasa else create_bot_app(slow_seconds=config.demo.slow_seconds)
    config = demo_config(config, bot)
    bot_runner = web.AppRunner(bot_app, access_log=None)
    await bot_runner.setup()
    await web.TCPSite(bot_runner, "127.0.0.1", 0).start()
    bot_url = bound_addresses(bot_runner)[0]
    config = dataclasses.replace(config, upstream=dataclasses.replace(config.upstream, url=bot_url))
    app = create_app(config)
    add_demo_widget(app, config)
    host_runner: web.AppRunner | None = None

    async def announce(runner: web.AppRunner, admin: web.AppRunner) -> None:
        nonlocal host_runner
        gateway = bound_addresses(runner)[0].replace("0.0.0.0", "localhost")
        widget = widget_url_for(bound_addresses(runner)[0])
        params: dict[str, str] = {}
        if rasa:  # the widget speaks the REST channel to its webhook
            params = {"bot": "rasa-rest", "endpoint": REST_WEBHOOK}
            body = '{"message": "hi"}'
            try_it = f"curl -si {gateway}{REST_WEBHOOK} -H 'Content-Type: application/json' -d '{body}'"
        else:
            try_it = f"curl -si '{gateway}/?userinput=hi'"
            if config.deferred.after:
                try_it += (
                    f"\n           or type {SLOW_COMMAND!r} in the chat: the bot takes {config.demo.slow_seconds:g} s,"
                    f" the gateway answers for it after {config.deferred.after:g} s"
                )
        host_runner = web.AppRunner(create_host_app(widget, params), access_log=None)
        await host_runner.setup()
        host = await _start_host_site(host_runner, config.listen.port + 1 if config.listen.port else 0)
        print(
            f"demo bot:  {bot_url}\n"
            f"gateway:   {gateway}\n"
            f"chat page: {host}/  (a host site embedding the chat widget from {widget})\n"
            f"admin:     {bound_addresses(admin)[0].replace('0.0.0.0', 'localhost')}/metrics\n"
            f"try:       {try_it}\n"
            "Ctrl-C stops.",
            file=sys.stderr,
            flush=True,
        )

    try:
        await serve(config, app=app, on_started=announce)
    finally:
        if host_runner is not None:
            await host_runner.cleanup()
        await bot_runner.cleanup()
