"""The proxy port's own pages (the JS session client, the demo widget): answered by the front end for GET
and HEAD, never forwarded. Every other request, and any other method on these paths, goes to the bot."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import unquote

from gateway.edge.messages import Incoming, Whole

Page = Callable[[str, Incoming], Awaitable[Whole | None]]  # (the path after the prefix, the request)
Route = Callable[[Incoming], Awaitable[Whole | None]]
_READ: Final = frozenset({"GET", "HEAD"})


class LocalRoutes:
    """Exact paths and path prefixes; a page answering None lets the request go to the bot."""

    def __init__(self) -> None:
        self._exact: dict[str, Page] = {}
        self._prefixes: dict[str, Page] = {}
        self._prefix_tuple: tuple[str, ...] = ()
        # Every page's path or prefix as written: a target that starts with none of them and has no "%" in it
        # is no page's (the front end asks so before it calls match()).
        self.starts: tuple[str, ...] = ()

    def add(self, path: str, page: Page) -> None:
        self._exact[path] = page
        self.starts = (*self.starts, path)

    def add_prefix(self, prefix: str, page: Page) -> None:
        self._prefixes[prefix] = page
        # Longest first: the most specific prefix wins, as aiohttp's router did.
        self._prefix_tuple = tuple(sorted(self._prefixes, key=len, reverse=True))
        self.starts = (*self.starts, prefix)

    def match(self, request: Incoming) -> Route | None:
        if request.method not in _READ:
            return None
        path = request.raw_path.split("?", 1)[0].split("#", 1)[0]
        if "%" in path:
            path = unquote(path)  # pages are matched on the decoded path
        page = self._exact.get(path)
        if page is not None:
            return functools.partial(page, "")
        for prefix in self._prefix_tuple:
            if path.startswith(prefix):
                return functools.partial(self._prefixes[prefix], path[len(prefix) :])
        return None
