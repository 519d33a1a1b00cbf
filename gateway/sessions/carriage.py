"""Find the session a request carries (header, cookie, path parameter, query) and rewrite what the bot sees."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple
from urllib.parse import unquote

from aiohttp import hdrs
from multidict import CIMultiDictProxy

from gateway.config import SessionConfig
from gateway.errors import BadSessionCarrier
from gateway.sessions.cookies import CONTROL, COOKIE_OCTETS, Pairs, parse_cookie_header, parse_cookie_string

Carrier = Literal["header", "cookie", "path", "query", "body", "none"]
CARRIERS: Final = ("header", "cookie", "path", "query", "body", "none")
Cookies = tuple[tuple[str, str], ...]
_CACHED: Final = 4096  # distinct (Cookie, session header) values remembered
_CACHEABLE: Final = 1024  # characters of both; longer values are parsed each time


@dataclass(slots=True)
class Carried:
    """What the request carried, and the target and cookies to forward with the session taken out."""

    session_id: str | None
    carrier: Carrier
    affinity: str | None  # the gateway's affinity value, as the client echoed it
    cookies: Cookies  # client cookies, merged with the header's pairs; session and affinity cookies removed
    target: str  # raw path and query, session path and query parameters removed
    is_end: bool  # the last path segment is session.end_path
    small: bool = True  # its Cookie and session header values fit the caches (see _CACHEABLE)


def validate_id(value: str, where: str, max_length: int) -> str:
    """A session id as presented; 400 bad_session_header when it cannot be one."""
    if not value:
        raise BadSessionCarrier(f"The session id in the {where} is empty.")
    # surrogateescape: header bytes that are not UTF-8 arrive as surrogates (both parsers decode so)
    if len(value) > max_length or (
        not value.isascii() and len(value.encode("utf-8", "surrogateescape")) > max_length
    ):
        raise BadSessionCarrier(f"The session id in the {where} is longer than {max_length} bytes.")
    if not COOKIE_OCTETS.fullmatch(value):
        if CONTROL.search(value):
            raise BadSessionCarrier(f"The session id in the {where} contains control characters.")
        raise BadSessionCarrier(f"The session id in the {where} has characters a cookie may not carry.")
    return value


def split_path_param(path: str, name: str) -> tuple[str, str | None]:
    """Remove `;<name>=<value>` (Tomcat-style, any segment, name case-insensitive) from a raw path."""
    if ";" not in path or not name:
        return path, None
    found = None
    segments = []
    for segment in path.split("/"):
        head, *params = segment.split(";")
        kept = []
        for param in params:
            key, sep, value = param.partition("=")
            if sep and key.lower() == name:
                found = value
            else:
                kept.append(param)
        segments.append(";".join([head, *kept]))
    return "/".join(segments), found


def _split_query_param(query: str, name: str) -> tuple[str, str | None]:
    if not name or not query:
        return query, None
    found = None
    kept = []
    for piece in query.split("&"):
        key, _, value = piece.partition("=")
        if unquote(key.replace("+", " ")) == name:
            found = unquote(value.replace("+", " "))
        else:
            kept.append(piece)
    return "&".join(kept), found


def last_segment(path: str) -> str:
    """The last path segment without its path parameters."""
    return path.rstrip("/").rsplit("/", 1)[-1].split(";", 1)[0]


class _Found(NamedTuple):
    """What the Cookie and session headers carry: the same values on every message of a conversation."""

    session_id: str | None  # from the session header, else the Cookie header; validated
    carrier: Carrier  # "header", "cookie" or "none"
    affinity: str | None
    cookies: Cookies


class Extractor:
    """Resolve the session a request carries, by precedence header > Cookie > path parameter > query parameter
    > the JSON body's `session.carry_json` member (read by the proxy, which holds the body).

    The header part is remembered per (Cookie, session header) value: a widget sends the same ones with
    every message, and parsing them was about a sixth of the session layer's bytecodes per request (issue 6).
    Errors are not remembered: a bad value is parsed, and refused, each time."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self._own = {config.cookie, config.affinity_cookie}
        self._found = functools.lru_cache(maxsize=_CACHED)(self._find)

    def __call__(self, target: str, headers: CIMultiDictProxy[str], body_id: str | None = None) -> Carried:
        config = self.config
        path, qsep, query = target.partition("?")
        from_path = from_query = None
        if ";" in path or (config.query_param and query):
            path, from_path = split_path_param(path, config.path_param.lower())
            query, from_query = _split_query_param(query, config.query_param)
            new_target = path + (qsep + query if query else "")
        else:  # nothing to take out (the common case): the target as it came, but for an empty "?"
            new_target = target if query else path
        cookie = tuple(headers.getall(hdrs.COOKIE, ()))
        raw_header = headers.get(config.header)
        # Large values are kept out of every cache (this one and the session layer's), which stay small
        # whatever clients send.
        small = sum(map(len, cookie)) + len(raw_header or "") <= _CACHEABLE
        found = self._found(cookie, raw_header) if small else self._find(cookie, raw_header)
        is_end = config.end_path in path and last_segment(path) == config.end_path
        if found.session_id is not None:
            return Carried(
                found.session_id, found.carrier, found.affinity, found.cookies, new_target, is_end, small
            )
        if from_path:
            session_id = validate_id(from_path, "path parameter", config.max_id_length)
            return Carried(session_id, "path", found.affinity, found.cookies, new_target, is_end, small)
        if from_query:
            session_id = validate_id(from_query, "query", config.max_id_length)
            return Carried(session_id, "query", found.affinity, found.cookies, new_target, is_end, small)
        if body_id:
            session_id = validate_id(body_id, "request body", config.max_id_length)
            return Carried(session_id, "body", found.affinity, found.cookies, new_target, is_end, small)
        return Carried(None, "none", found.affinity, found.cookies, new_target, is_end, small)

    def _find(self, cookie: tuple[str, ...], raw_header: str | None) -> _Found:
        config = self.config
        order: Pairs = []
        for value in cookie:
            order.extend(parse_cookie_header(value))
        from_cookie = affinity = None
        for name, value in order:  # the last of each wins
            if name == config.cookie:
                from_cookie = value
            elif name == config.affinity_cookie:
                affinity = value
        from_header = None
        merged: dict[str, str] = {}
        if raw_header is not None:
            try:
                header_pairs = parse_cookie_string(raw_header)
            except ValueError as exc:
                raise BadSessionCarrier(f"{config.header} is not a cookie string: {exc}.") from None
            for name, value in header_pairs:
                if name == config.cookie:
                    from_header = value
                elif name == config.affinity_cookie:
                    affinity = value
                else:
                    merged[name] = value  # the header's pairs win over the Cookie header's
        own = self._own
        cookies = [(n, merged.pop(n) if n in merged else v) for n, v in order if n not in own]
        cookies.extend(merged.items())
        # An empty value is no session: a browser stuck with `JSESSIONID=` must still be able to chat.
        if from_header:
            session_id = validate_id(from_header, config.header, config.max_id_length)
            return _Found(session_id, "header", affinity, tuple(cookies))
        if from_cookie:
            session_id = validate_id(from_cookie, "Cookie header", config.max_id_length)
            return _Found(session_id, "cookie", affinity, tuple(cookies))
        return _Found(None, "none", affinity, tuple(cookies))


def extract(target: str, headers: CIMultiDictProxy[str], config: SessionConfig) -> Carried:
    """Resolve the session a request carries, once (tests and one-off calls; SessionManager keeps an Extractor)."""
    return Extractor(config)(target, headers)
