"""Helpers for every gateway test: loopback upstreams, the gateway in process (behind a test client) and as
a subprocess, raw HTTP over a socket, polling. The fixtures that start these are in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping
from prometheus_client import CollectorRegistry

from gateway.config import Config, load_config

LOOPBACK = "127.0.0.1"
SeenT = TypeVar("SeenT")


def free_port() -> int:
    """A loopback port nobody listens on (closed again before returning)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def closed_url() -> str:
    """An upstream URL that refuses connections."""
    return f"http://{LOOPBACK}:{free_port()}"


def make_config(upstream_url: str, **sections: Mapping[str, Any]) -> Config:
    """Defaults (through load_config) pointed at `upstream_url`, with per-section overrides.

    make_config(url, upstream={"read_timeout": 0.3}, listen={"trusted_proxies": ("127.0.0.1",)})
    """
    config = load_config(None, environ={"GATEWAY_UPSTREAM_URL": upstream_url})
    for name, values in sections.items():
        config = dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)})
    return config


async def eventually(
    check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01, what: str = "condition"
) -> None:
    """Poll `check` (sync or async) until it returns truthy; fail with its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout}s (last value {result!r})")
        await asyncio.sleep(interval)


async def wait(awaitable: Awaitable[Any], timeout: float = 5.0) -> Any:
    """Await with a generous deadline, so a broken gateway fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, timeout)


# --- upstreams ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordedRequest:
    """One request as a Recorder upstream saw it, body included."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    body: bytes


class CatchAll(Generic[SeenT]):
    """Base of a test upstream whose `handle` answers every method and path, and whose `seen` records them."""

    __slots__ = ()
    seen: list[SeenT]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    @property
    def last(self) -> SeenT:
        assert self.seen, f"the {type(self).__name__} saw no request"
        return self.seen[-1]


@dataclass(slots=True)
class Recorder(CatchAll[RecordedRequest]):
    """A catch-all upstream that records every request and answers 200 `ok`."""

    seen: list[RecordedRequest] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = b"".join([chunk async for chunk in request.content.iter_any()])
        self.seen.append(RecordedRequest(request.method, request.raw_path, request.headers, body))
        return web.Response(text="ok")


StartUpstream = Callable[..., Awaitable[str]]


@dataclass(slots=True)
class RawUpstream:
    """An upstream answering every request with fixed bytes, written by hand (headers aiohttp won't send)."""

    url: str
    requests: list[bytes]


StartRawUpstream = Callable[[bytes], Awaitable[RawUpstream]]


# --- the gateway in process -----------------------------------------------------------------------------


@dataclass(slots=True)
class Gateway:
    """The gateway app behind a test client, with its own metrics registry."""

    client: TestClient[Any, Any]
    app: web.Application
    registry: CollectorRegistry
    config: Config

    @property
    def port(self) -> int:
        port = self.client.port
        assert port is not None
        return port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        """A sample value; 0.0 when that label set has no sample yet. A name no metric exposes is an
        error, so a misspelt name can never pass as a zero."""
        value = self.registry.get_sample_value(name, labels)
        if value is not None:
            return value
        known: set[str] = set()
        for family in self.registry.collect():  # a labelled counter no request has touched has no samples
            known.update({family.name, f"{family.name}_total"}, (sample.name for sample in family.samples))
        if name not in known:
            raise AssertionError(f"no metric sample is named {name!r}")
        return 0.0


StartGateway = Callable[..., Awaitable[Gateway]]


# --- raw HTTP over a socket -----------------------------------------------------------------------------


@dataclass(slots=True)
class RawResponse:
    """A response read in full: its status, headers and body."""

    status: int
    headers: MultiMapping[str]
    body: bytes


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> RawResponse:
    """Send bytes exactly as given (input aiohttp's client refuses to send), read until the server closes,
    parse the first response head."""

    async def go() -> bytes:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(data)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    raw = await asyncio.wait_for(go(), timeout)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return RawResponse(int(status_line.split()[1]), headers, body)


# --- the gateway as a subprocess ------------------------------------------------------------------------


@dataclass(slots=True)
class GatewayProcess:
    """`python -m gateway <command>` on loopback ports, its stderr captured to a file."""

    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @classmethod
    def launch(
        cls,
        stderr_path: Path,
        env: Mapping[str, str],
        command: str = "serve",
        *args: str,
        program: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> Self:
        """Start `program command *args` (`python -m gateway serve` by default) on two free loopback ports,
        with no GATEWAY_* variables but `env` and the ports; without waiting for it to listen."""
        port, admin_port = free_port(), free_port()
        ports = {
            "GATEWAY_LISTEN_HOST": LOOPBACK,
            "GATEWAY_LISTEN_PORT": str(port),
            "GATEWAY_ADMIN_HOST": LOOPBACK,
            "GATEWAY_ADMIN_PORT": str(admin_port),
        }
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [*(program or (sys.executable, "-m", "gateway")), command, *args],
                env=clean_environ(**{**ports, **env}),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        return cls(proc, port, admin_port, stderr_path)

    async def started(self, timeout: float = 15.0) -> None:
        """Wait until the admin port answers /livez (and the proxy port accepts connections)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"the gateway exited with {self.proc.returncode}:\n{self.stderr()}")
                try:
                    async with session.get(f"{self.admin_url}/livez") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the gateway did not start within {timeout}s:\n{self.stderr()}")
                await asyncio.sleep(0.05)
        # The admin site starts after the proxy site, so the proxy port is open by now.

    async def exit_code(self, timeout: float) -> int:
        """Wait for the process to exit; fail (and kill it) if it takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the gateway did not exit within {timeout}s:\n{self.stderr()}")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)


def clean_environ(**extra: str) -> dict[str, str]:
    """The test process' environment without GATEWAY_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(extra)
    return env


SpawnGateway = Callable[..., Awaitable[GatewayProcess]]


def assert_no_errors(caplog: pytest.LogCaptureFixture, logger: str = "") -> None:
    """Nothing logged at ERROR or above (by `logger` and its children, or by anyone): no traceback, no 500."""
    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and (not logger or r.name == logger or r.name.startswith(logger + "."))
    ]
    assert not errors
