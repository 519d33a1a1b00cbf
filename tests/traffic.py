"""A scripted session scenario through a running gateway, and the metric values it implies.

Used by test_metrics.py (the exposition after it passes promtool) and test_prometheus_server.py (a real
Prometheus scrapes the gateway during it and evaluates every dashboard and alert query).

The story, with session.max_sessions = 3 and on_full = "reject":
  phase 1  clients A, B and C start conversations (reason first); D is refused at the cap (503).
  phase 2  A talks on in the X-Teneo-Session header, once in a `;jsessionid=` path parameter, once with an
           unlisted method, once into a bot that drops the connection (502, upstream error "reset"), and
           once with an id too long to be one (400); B talks in a cookie and the bot sets its idle
           timeout to 1 s, so the sweeper ends it (idle); C ends its session (endsession, client);
           B and C come back with their old ids (reasons expired and ended); D is refused again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from session_helpers import carrying, session_control

from gateway.demo import create_bot_app
from gateway.ops.metrics import method_label

# What the story implies; every other reason counts 0.
MAX_SESSIONS = 3
SESSION_OPTIONS = {"max_sessions": MAX_SESSIONS, "on_full": "reject", "sweep_interval": 0.2}
STARTED = {"first": 3, "expired": 1, "ended": 1}
ENDED = {"client": 1, "idle": 1}
REJECTED = 2
ACTIVE = 3
UPSTREAM_ERRORS = {"reset": 1}
RESET_PATH = "/reset"  # the bot drops the connection without answering


def bot_app() -> web.Application:
    """The demo bot; `?control=<v>` makes it answer X-Session-Control: <v>; RESET_PATH hangs up."""
    app = create_bot_app()

    @web.middleware
    async def quirks(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if request.path == RESET_PATH:
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never sent
        return await handler(request)

    app.middlewares.extend((quirks, session_control))
    return app


@dataclass(slots=True)
class Traffic:
    """Sends the story's requests and counts what each must have counted in the gateway."""

    http: Any  # a TestClient, or a ClientSession with base_url: `.request(method, path, headers=...)`
    registry: CollectorRegistry
    carriers: Counter[str] = field(default_factory=Counter)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method label, code)
    secrets: set[str] = field(default_factory=set)  # session ids and affinity values the clients saw

    async def send(
        self,
        path: str = "/?userinput=hi",
        *,
        method: str = "GET",
        header: str | None = None,
        cookie: str | None = None,
        expect: int = 200,
    ) -> str | None:
        """One request carrying the session at most one way; the session id it answered with."""
        async with self.http.request(method, path, headers=carrying(header, cookie)) as response:
            await asyncio.wait_for(response.read(), 5)
            status = response.status
            session_id = response.headers.get("X-Session-Id")
            affinity = response.headers.get("X-Gateway-Session", "").partition("=")[2]
        assert status == expect, f"{method} {path}: expected {expect}, got {status}"
        self.requests[(method_label(method), str(status))] += 1
        too_long = any(len(v or "") > 128 for v in (header, cookie))
        if not too_long:  # refused before the gateway looked at its carrier
            carrier = (
                "header" if header else "cookie" if cookie else "path" if ";jsessionid=" in path else "none"
            )
            self.carriers[carrier] += 1
        self.secrets.update(s for s in (session_id, affinity) if s)
        return session_id

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    async def phase1(self) -> dict[str, str]:
        """A, B and C start; D is refused. The three session ids."""
        ids = {}
        for client in "ABC":
            session_id = await self.send()
            assert session_id is not None, f"client {client} got no session"
            ids[client] = session_id
        await self.send(expect=503)
        return ids

    async def phase2(self, ids: dict[str, str]) -> None:
        a, b, c = ids["A"], ids["B"], ids["C"]
        assert await self.send(header=a) == a
        assert await self.send(f"/chat;jsessionid={a}?userinput=path") == a
        assert await self.send(method="PROPFIND", header=a) == a  # method label "other"
        await self.send(RESET_PATH, header=a, expect=502)
        await self.send(header="A" * 200, expect=400)
        assert await self.send("/?userinput=hi&control=timeout=1", cookie=b) == b
        await self.send("/endsession", method="POST", header=c)
        deadline = time.monotonic() + 5
        while self.value("session_gateway_sessions_ended_total", reason="idle") < 1:
            assert time.monotonic() < deadline, "the sweeper did not end B within 5 s"
            await asyncio.sleep(0.05)
        assert await self.send(cookie=b) not in (None, b)  # expired: a new conversation
        assert await self.send(header=c) not in (None, c)  # ended: a new conversation
        await self.send(expect=503)


async def run(traffic: Traffic, between: Callable[[], Awaitable[None]] | None = None) -> None:
    """The whole story; `between` runs between the phases (a test waits for a scrape there)."""
    ids = await traffic.phase1()
    if between is not None:
        await between()
    await traffic.phase2(ids)
