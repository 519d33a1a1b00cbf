"""Pure header functions: hop-by-hop stripping and X-Forwarded-*."""

from __future__ import annotations

import functools
import ipaddress
from typing import Final

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy, istr

# RFC 9110 §7.6.1 names these; RFC 2616 §13.5.1 adds Trailer(s) and the Proxy-Auth pair.
HOP_BY_HOP: Final = frozenset(
    istr(name)
    for name in (
        "Connection",
        "Proxy-Connection",
        "Keep-Alive",
        "TE",
        "Transfer-Encoding",
        "Upgrade",
        "Trailer",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    )
)
# Answered by this hop (aiohttp sends 100 Continue itself), or rebuilt by the client library.
REQUEST_ONLY_DROP: Final = frozenset(istr(name) for name in (hdrs.HOST, hdrs.EXPECT))
WEBSOCKET_HANDSHAKE: Final = frozenset(
    istr(name)
    for name in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Accept",
    )
)
_HOP_LOWER: Final = frozenset({"close", *(str(name).lower() for name in HOP_BY_HOP)})
X_FORWARDED_FOR: Final = istr("X-Forwarded-For")
X_FORWARDED_PROTO: Final = istr("X-Forwarded-Proto")
X_FORWARDED_HOST: Final = istr("X-Forwarded-Host")

Headers = CIMultiDict[str] | CIMultiDictProxy[str]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def connection_tokens(headers: Headers) -> frozenset[str]:
    """Header names listed in every `Connection` field (RFC 9110 §7.6.1), lowercased."""
    return frozenset(
        token.strip().lower()
        for value in headers.getall(hdrs.CONNECTION, ())
        for token in value.split(",")
        if token.strip()
    )


def strip_hop_by_hop(headers: Headers, extra: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """A copy without hop-by-hop fields, the fields `Connection` names, and `extra`; repeats are kept."""
    # Copy in C, then delete only the names present, found by multidict's case-insensitive set intersection
    # (also C): a popall per droppable name cost ~300 bytecodes a request across both directions (issue 6).
    out = CIMultiDict(headers)
    connection = out.getall(hdrs.CONNECTION, None)
    # A lone "keep-alive" or "close", by far the commonest values, names nothing more to remove.
    if connection and (len(connection) > 1 or connection[0].strip().lower() not in _HOP_LOWER):
        for name in connection_tokens(out) - _HOP_LOWER:
            out.popall(name, None)
    for name in out.keys() & _droppable(extra):
        out.popall(name, None)
    return out


@functools.lru_cache(maxsize=16)
def _droppable(extra: frozenset[str]) -> frozenset[str]:
    return HOP_BY_HOP | extra


def encode_head(start: list[str], headers: Headers, *tail: str) -> bytes:
    """A message head: start lines, a line per field, `tail` lines, the blank line; in the bytes it came in."""
    # ": ".join in map: the loop runs in C (measured 2x faster than formatting each line in a generator).
    # Header values were decoded with surrogateescape (ours and aiohttp's parsers): the same bytes go back.
    lines = [*start, *map(": ".join, headers.items()), *tail, "", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def is_trusted(peer: str | None, trusted: tuple[Network, ...]) -> bool:
    """Whether the connecting peer may set X-Forwarded-* for us."""
    if not trusted or not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def set_forwarded(
    headers: CIMultiDict[str], *, peer: str | None, scheme: str, host: str | None, trusted: bool
) -> None:
    """Add X-Forwarded-For/-Proto/-Host; a client's own values survive only from a trusted proxy."""
    if trusted:
        prior = ", ".join(headers.getall(X_FORWARDED_FOR, ()))
        headers[X_FORWARDED_FOR] = f"{prior}, {peer}" if prior and peer else (prior or peer or "")
        headers.setdefault(X_FORWARDED_PROTO, scheme)
        if host:
            headers.setdefault(X_FORWARDED_HOST, host)
        return
    # Setting a field replaces every copy the client sent.
    if peer:
        headers[X_FORWARDED_FOR] = peer
    else:
        headers.popall(X_FORWARDED_FOR, None)
    headers[X_FORWARDED_PROTO] = scheme
    if host:
        headers[X_FORWARDED_HOST] = host
    else:
        headers.popall(X_FORWARDED_HOST, None)


def is_websocket_upgrade(headers: Headers) -> bool:
    """An HTTP/1.1 WebSocket handshake (RFC 6455 §4.1)."""
    return headers.get(hdrs.UPGRADE, "").lower() == "websocket" and "upgrade" in connection_tokens(headers)


def redact_path(path: str) -> str:
    """The path for logs: no query string, and path parameters (`;jsessionid=...`) masked."""
    path = path.split("?", 1)[0]
    if ";" not in path:
        return path
    segments = []
    for segment in path.split("/"):
        head, *params = segment.split(";")
        segments.append(";".join([head, *(p.split("=", 1)[0] + "=…" for p in params)]))
    return "/".join(segments)


def content_length(value: str) -> int | None:
    """A Content-Length value by llhttp's rules (digits, at most 2**64 - 1) as a number; None if invalid.

    Not int() on the raw text: "0000…01" is valid, and int() refuses more than 4,300 digits."""
    if len(value) < 19 and value.isdigit():  # the usual spelling: at most 18 digits, so a plain int()
        return int(value)
    value = value.strip(" \t")
    if not value.isdigit() or not value.isascii():
        return None
    digits = value.lstrip("0")
    return int(digits or "0") if len(digits) <= 20 else None
