"""Helpers and fixtures for the end-to-end session tests: a fake clock, recording bots (the demo bot and
HeaderEchoBot), make_session_config, and the Rig: the gateway behind a cookie-less client on that clock."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from gateway_helpers import LOOPBACK, CatchAll, RawResponse
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry
from served import GatewayTestServer

from gateway.app import create_app
from gateway.config import Config, load_config
from gateway.demo import create_bot_app

P = "session_gateway_"
START_REASONS = ("first", "expired", "lifetime", "ended", "unknown", "upstream", "adopted")
END_REASONS = ("idle", "lifetime", "client", "bot", "upstream", "evicted", "admin")
CARRIERS = ("cookie", "header", "path", "query", "body", "none")


class FakeClock:
    """An injectable clock (seconds) that only moves when the test advances it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(slots=True)
class SeenByBot:
    """One request as a test bot saw it: the head only (no body), with its cookies parsed."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]

    @property
    def cookie(self) -> str | None:
        return self.headers.get("Cookie")

    @property
    def cookies(self) -> list[tuple[str, str]]:
        """The Cookie header's pairs, in order (repeats kept)."""
        pairs = []
        for value in self.headers.getall("Cookie", ()):
            for piece in value.split(";"):
                name, _, val = piece.strip().partition("=")
                if name:
                    pairs.append((name, val))
        return pairs


def _record(request: web.Request) -> SeenByBot:
    return SeenByBot(request.method, request.raw_path, CIMultiDictProxy(CIMultiDict(request.headers)))


@web.middleware
async def session_control(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A bot's middleware: `?control=<v>` makes it answer X-Session-Control: <v>."""
    response = await handler(request)
    control = request.query.get("control")
    if control:
        response.headers["X-Session-Control"] = control
    return response


def carrying(
    header: str | None = None, cookie: str | None = None, headers: Mapping[str, str] | None = None
) -> CIMultiDict[str]:
    """`headers` plus the session: `header=<id>` in X-Teneo-Session, `cookie=<id>` in Cookie."""
    h: CIMultiDict[str] = CIMultiDict(headers or {})
    if header is not None:
        h["X-Teneo-Session"] = f"JSESSIONID={header}"
    if cookie is not None:
        h["Cookie"] = f"JSESSIONID={cookie}"
    return h


def demo_bot_app(
    clock: Callable[[], float], seen: list[SeenByBot], *, idle_timeout: float = 86400.0, delay: float = 0.0
) -> web.Application:
    """The demo bot, recording what it sees; `?control=<v>` makes it answer X-Session-Control: <v>."""
    app = create_bot_app(idle_timeout=idle_timeout, clock=clock)

    @web.middleware
    async def recording(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Any:
        seen.append(_record(request))
        if delay:
            await asyncio.sleep(delay)
        return await handler(request)

    app.middlewares.extend((recording, session_control))
    return app


@dataclass(slots=True)
class HeaderEchoBot(CatchAll[SeenByBot]):
    """A test bot that answers the request head it saw (raw path, cookie, headers) as JSON.

    rotate: every answer sets a fresh JSESSIONID (a bot that replaces sessions on its own);
    end_status: the status answered on `.../endsession` (404/405 for a bot without that route);
    response_headers: added to every answer.
    """

    seen: list[SeenByBot] = field(default_factory=list)
    url: str = ""
    rotate: bool = False
    end_status: int | None = None
    response_headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(_record(request))
        if self.delay:
            await asyncio.sleep(self.delay)
        last = request.path.rstrip("/").rsplit("/", 1)[-1]
        if last == "endsession" and self.end_status is not None:
            return web.Response(status=self.end_status, text="no such route")
        headers: CIMultiDict[str] = CIMultiDict(self.response_headers)
        if self.rotate:
            headers.add("Set-Cookie", f"JSESSIONID={secrets.token_hex(8).upper()}; Path=/; HttpOnly")
        body = {
            "raw_path": request.raw_path,
            "cookie": request.headers.get("Cookie"),
            "headers": [[k, v] for k, v in request.headers.items()],
        }
        return web.json_response(body, headers=headers)


def make_session_config(
    upstream_url: str,
    *,
    session: Mapping[str, Any] | None = None,
    cors: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """For the session tests: defaults through load_config, pointed at the bot, with a 600 s idle timeout, a
    sweeper that waits an hour unless a test asks otherwise, and no access log. Unlike gateway_helpers'
    make_config, it takes only `session` and `cors` overrides (and GATEWAY_* `environ`)."""
    env = {
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_SESSION_IDLE_TIMEOUT": "600",
        "GATEWAY_SESSION_SWEEP_INTERVAL": "3600",
        "GATEWAY_LOG_ACCESS": "false",
        **(environ or {}),
    }
    config = load_config(None, environ=env)
    if session:
        config = dataclasses.replace(config, session=dataclasses.replace(config.session, **session))
    if cors:
        config = dataclasses.replace(config, cors=dataclasses.replace(config.cors, **cors))
    return config


class Reply(RawResponse):
    """A gateway response read in full, and what it says about the session."""

    __slots__ = ()

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def session_id(self) -> str | None:
        return self.headers.get("X-Session-Id")

    @property
    def new(self) -> str | None:
        return self.headers.get("X-Session-New")

    @property
    def turn(self) -> int:
        """The demo bot's turn counter."""
        return int(self.json["output"]["parameters"]["turn"])

    @property
    def set_cookies(self) -> list[str]:
        return list(self.headers.getall("Set-Cookie", ()))

    def set_cookie(self, name: str) -> str | None:
        return next((c for c in self.set_cookies if c.split("=", 1)[0] == name), None)


@dataclass(slots=True)
class Rig:
    """The gateway app behind a cookie-less test client, with its registry and fake clock."""

    client: TestClient[Any, Any]
    app: web.Application
    registry: CollectorRegistry
    clock: FakeClock
    config: Config

    async def send(
        self,
        path: str = "/?userinput=hi",
        *,
        method: str = "GET",
        header: str | None = None,
        cookie: str | None = None,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Reply:
        """One request; `header=<id>` carries the session in X-Teneo-Session, `cookie=<id>` in Cookie."""
        h = carrying(header, cookie, headers)
        async with self.client.request(method, path, headers=h, data=data) as response:
            body = await asyncio.wait_for(response.read(), 5)
            return Reply(response.status, response.headers, body)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(P + name, labels)

    def started(self, reason: str) -> float | None:
        return self.metric("sessions_started_total", reason=reason)

    def ended(self, reason: str) -> float | None:
        return self.metric("sessions_ended_total", reason=reason)

    @property
    def active(self) -> float | None:
        return self.metric("sessions_active")

    def counts(self, family: str, labels: tuple[str, ...], label: str) -> dict[str, float | None]:
        return {value: self.metric(family, **{label: value}) for value in labels}


StartRig = Callable[..., Awaitable[Rig]]


async def start_rig(aiohttp_client: Any, config: Config, clock: FakeClock) -> Rig:
    registry = CollectorRegistry()
    app = create_app(config, registry=registry, clock=clock)
    client = await aiohttp_client(GatewayTestServer(app), cookie_jar=aiohttp.DummyCookieJar())
    return Rig(client, app, registry, clock, config)


def carry(carrier: str, session_id: str, path: str = "/", query: str = "userinput=x") -> dict[str, Any]:
    """Keyword arguments for Rig.send that carry `session_id` one way only (query: `sid`)."""
    q = f"?{query}" if query else ""
    if carrier == "header":
        return {"path": path + q, "header": session_id}
    if carrier == "cookie":
        return {"path": path + q, "cookie": session_id}
    if carrier == "path":
        return {"path": f"{path};jsessionid={session_id}{q}"}
    if carrier == "query":
        return {"path": f"{path}?sid={session_id}" + (f"&{query}" if query else "")}
    raise ValueError(carrier)


@dataclass(slots=True)
class Bot:
    """A bot on loopback and the requests it saw."""

    url: str
    seen: list[SeenByBot]

    @property
    def last(self) -> SeenByBot:
        assert self.seen, "the bot saw no request"
        return self.seen[-1]


StartDemo = Callable[..., Awaitable[Bot]]
StartEcho = Callable[..., Awaitable[HeaderEchoBot]]


# --- fixtures (registered by conftest.py's pytest_plugins; ask for them by name) -----------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_demo(aiohttp_server: Any, clock: FakeClock) -> StartDemo:
    """start(idle_timeout=86400, delay=0) -> the demo bot on the test's fake clock."""

    async def start(*, idle_timeout: float = 86400.0, delay: float = 0.0) -> Bot:
        seen: list[SeenByBot] = []
        server = await aiohttp_server(demo_bot_app(clock, seen, idle_timeout=idle_timeout, delay=delay))
        return Bot(f"http://{LOOPBACK}:{server.port}", seen)

    return start


@pytest.fixture
async def demo(start_demo: StartDemo) -> Bot:
    return await start_demo()


@pytest.fixture
def start_echo(aiohttp_server: Any) -> StartEcho:
    """start(**HeaderEchoBot options) -> a HeaderEchoBot on loopback (its `url` set)."""

    async def start(**options: Any) -> HeaderEchoBot:
        bot = HeaderEchoBot(**options)
        server = await aiohttp_server(bot.app())
        bot.url = f"http://{LOOPBACK}:{server.port}"
        return bot

    return start


@pytest.fixture
def rig_for(aiohttp_client: Any, clock: FakeClock) -> StartRig:
    """start(upstream_url, cors=None, **session options) -> a Rig on the test's fake clock."""

    async def start(url: str, *, cors: Mapping[str, Any] | None = None, **session: Any) -> Rig:
        return await start_rig(aiohttp_client, make_session_config(url, session=session, cors=cors), clock)

    return start
