"""A webhook receiver for lifecycle events on loopback: records, verifies signatures, fails and holds on demand."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import pytest
from aiohttp import web
from gateway_helpers import LOOPBACK

SECRET = "webhook-secret"


class Receiver:
    """Records each accepted batch; `failures` are the next answers (a status, or "reset"); while `held` is
    set, a POST waits for `release` and then fails, as if its sender had died before the answer."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.failures: list[int | str] = []
        self.attempts = 0
        self.bad_signatures = 0
        self.url = ""
        self.held = False
        self.release = asyncio.Event()

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every event accepted, duplicates included, in arrival order."""
        return [event for batch in self.batches for event in batch]

    @property
    def events(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for event in self.received:
            seen.setdefault(event["id"], event)  # a receiver deduplicates by id
        return list(seen.values())

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Gateway-Signature-256", ""), expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.held:
            await self.release.wait()
            return web.Response(status=503)
        if self.failures:
            failure = self.failures.pop(0)
            if failure == "reset":
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError
            return web.Response(status=int(failure), headers={"Retry-After": "0"})
        self.batches.append(json.loads(body)["events"])
        return web.Response(status=204)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    server = await aiohttp_server(app)
    recv.url = f"http://{LOOPBACK}:{server.port}/hook"
    return recv
