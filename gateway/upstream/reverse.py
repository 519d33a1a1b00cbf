"""Map what the bot says about its own URLs back to the public ones: cookie paths and redirects.

The bot lives at `upstream.url` (say `http://bot:8080/bot`) and scopes its cookies and redirects to that
path, while clients call the gateway at `upstream.public_prefix` (say `/`). A browser then never sends the
cookie back (`Path=/bot` does not cover `/engine`) and follows redirects to a host it cannot reach. nginx
(`proxy_cookie_path`, `proxy_redirect default`) and Apache (`ProxyPassReverse`, `ProxyPassReverseCookiePath`)
rewrite both; so do we. Bodies are never rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import hdrs
from multidict import CIMultiDict, istr

from gateway.sessions.carriage import split_path_param

_LOCATIONS: Final = (hdrs.LOCATION, hdrs.CONTENT_LOCATION)
REVERSED: Final = frozenset({istr(hdrs.SET_COOKIE), istr(hdrs.LOCATION), istr(hdrs.CONTENT_LOCATION)})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _under(path: str, prefix: str) -> str | None:
    """The rest of `path` after `prefix` on a segment boundary ("" for the prefix itself), else None."""
    if not prefix:
        return path
    if path == prefix or path.startswith(prefix + "/"):
        return path[len(prefix) :]
    if path.startswith(prefix + ";"):  # "/bot;jsessionid=…"
        return path[len(prefix) :]
    return None


class PathMap:
    """One bot replica's base URL and the public prefix, for its responses."""

    __slots__ = ("_origin", "_prefix", "_public", "rewrites_cookies")

    def __init__(self, base: str, public_prefix: str) -> None:
        parts = urlsplit(base)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        self._origin = (parts.scheme, (parts.hostname or "").lower(), port)
        self._prefix = parts.path.rstrip("/")
        self._public = public_prefix
        self.rewrites_cookies = self._prefix != self._public

    def public_path(self, path: str) -> str | None:
        """The public path for a path under the bot's base, else None."""
        rest = _under(path, self._prefix)
        if rest is None:
            return None
        if not rest or rest[0] != "/":
            rest = "/" + rest if rest else ""
        return (self._public + rest) or "/"

    def cookie(self, set_cookie: str) -> str:
        """A Set-Cookie with a `Path` under the bot's base mapped to the public prefix."""
        first, *attrs = set_cookie.split(";")
        changed = False
        for i, attr in enumerate(attrs):
            name, sep, value = attr.partition("=")
            if sep and name.strip().lower() == "path":
                mapped = self.public_path(value.strip())
                if mapped is not None:
                    if self._public and mapped == self._public + "/":
                        mapped = self._public  # the bot's whole site: the whole public prefix
                    attrs[i] = f" Path={mapped}"
                    changed = True
        return ";".join([first, *attrs]) if changed else set_cookie

    def location(self, value: str, strip_param: str) -> str:
        """A Location into the bot's base as a path-absolute public reference (`strip_param`, when set, is
        removed from its path: the client carries the session another way); any other value unchanged."""
        if value.startswith("/") and not value.startswith("//"):
            target = value
        else:
            try:
                parts = urlsplit(value)
                port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
            except ValueError:  # a malformed port or bracket: not ours to fix
                return value
            if (parts.scheme, (parts.hostname or "").lower(), port) != self._origin:
                return value  # relative ("engine?x"), or another site's
            # The raw path on (urlsplit's parts would lose an empty "?" or "#"): after "scheme://netloc".
            target = value[len(parts.scheme) + 3 + len(parts.netloc) :]
            if not target.startswith("/"):
                target = "/" + target
        path, mark, tail = _cut(target)
        mapped = self.public_path(path)
        if mapped is None:
            return value
        if strip_param:
            mapped, _ = split_path_param(mapped, strip_param)
        if mapped[1:2] in ("/", "\\"):
            # "//evil.example" (or "/\\evil.example", which browsers read alike) would send the client to
            # another site: a redirect that pointed at the bot must not become one.
            return value
        return mapped + mark + tail


def _cut(target: str) -> tuple[str, str, str]:
    """A path-absolute reference split at its query or fragment."""
    for i, char in enumerate(target):
        if char in "?#":
            return target[:i], char, target[i + 1 :]
    return target, "", ""


def reverse(headers: CIMultiDict[str], path_map: PathMap, strip_param: str) -> None:
    """Rewrite the bot's Set-Cookie paths and Location/Content-Location in place."""
    if path_map.rewrites_cookies and hdrs.SET_COOKIE in headers:
        cookies: Iterable[str] = headers.popall(hdrs.SET_COOKIE)
        for value in cookies:
            headers.add(hdrs.SET_COOKIE, path_map.cookie(value))
    for name in _LOCATIONS:
        location = headers.get(name)
        if location is not None:
            headers[name] = path_map.location(location, strip_param)
