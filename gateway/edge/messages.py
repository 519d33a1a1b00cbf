"""What a request and a response look like to the proxy, whichever server parsed or writes them:
aiohttp's (web.Request, web.StreamResponse: WebSocket handshakes, handed over) or the front end's (front_request.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy


class Incoming(Protocol):
    """What the proxy reads of a request: the front end's (front_request.py), or aiohttp's web.Request (WebSocket)."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def body_exists(self) -> bool: ...
    @property
    def content(self) -> Any: ...  # readexactly(n) and iter_any(), as aiohttp's StreamReader
    @property
    def transport(self) -> asyncio.Transport | None: ...


class Outgoing(Protocol):
    """A streamed response: the front end's (front_response.py), or aiohttp's web.StreamResponse."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> CIMultiDict[str]: ...

    async def prepare(self, request: Any) -> Any: ...

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self, data: bytes = b"") -> None: ...


NewStream = Callable[[int, str, CIMultiDict[str]], Outgoing]


@dataclass(slots=True)
class Whole:
    """A response the proxy holds complete (a chat turn's JSON), written head and body at once.

    Not a web.Response: building one was ~4% of a proxied request's CPU in the front end (issue 6)."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes
