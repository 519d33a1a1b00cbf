"""Pure cookie functions (RFC 6265): parse Cookie strings, build and rewrite Set-Cookie."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Literal

SameSite = Literal["Lax", "Strict", "None"]

# RFC 6265 §4.1.1: cookie-octet excludes CTLs, whitespace, DQUOTE, comma, semicolon and backslash.
COOKIE_OCTETS: Final = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]+")
TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

Pairs = list[tuple[str, str]]


def parse_cookie_header(value: str) -> Pairs:
    """Lenient parse of a browser's Cookie header; pieces without '=' are kept with an empty name."""
    pairs: Pairs = []
    for piece in value.split(";"):
        piece = piece.strip()
        if not piece:
            continue
        name, sep, val = piece.partition("=")
        pairs.append((name.strip(), val.strip()) if sep else ("", piece))
    return pairs


def parse_cookie_string(value: str) -> Pairs:
    """Strict parse of a cookie string such as `JSESSIONID=31992FA7; FOO=BAR`; ValueError says what is wrong."""
    if CONTROL.search(value):
        raise ValueError("it contains control characters")
    pairs: Pairs = []
    for piece in value.split(";"):
        piece = piece.strip()
        if not piece:
            continue
        name, sep, val = piece.partition("=")
        name, val = name.strip(), val.strip()
        if not sep or not TOKEN.fullmatch(name):
            raise ValueError(f"{_show(piece)} is not a name=value cookie pair")
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        if val and not COOKIE_OCTETS.fullmatch(val):
            raise ValueError(f"the value of cookie {name} has characters a cookie may not carry")
        pairs.append((name, val))
    if not pairs:
        raise ValueError("it holds no cookie pair")
    return pairs


def render_cookie_header(pairs: Iterable[tuple[str, str]]) -> str:
    """Pairs back into a Cookie header value."""
    return "; ".join(f"{name}={value}" if name else value for name, value in pairs)


def _show(text: str, limit: int = 24) -> str:
    """A piece of client input for an error message, short and without secrets' full length."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def set_cookie_name_value(header: str) -> tuple[str, str]:
    """The name and value of a Set-Cookie field."""
    first = header.split(";", 1)[0]
    name, _, value = first.partition("=")
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return name.strip(), value


def set_cookie_deletes(header: str) -> bool:
    """Whether a Set-Cookie removes its cookie (Max-Age <= 0, or an empty value with an Expires)."""
    _, value = set_cookie_name_value(header)
    attrs = {a.split("=", 1)[0].strip().lower(): a.partition("=")[2].strip() for a in header.split(";")[1:]}
    max_age = attrs.get("max-age")
    if max_age is not None:
        try:
            return int(max_age) <= 0
        except ValueError:
            return False
    return value == "" and "expires" in attrs


def build_set_cookie(
    name: str,
    value: str,
    *,
    samesite: SameSite,
    secure: bool,
    partitioned: bool,
    max_age: int | None = None,
    path: str = "/",
) -> str:
    """A Set-Cookie value for one of the gateway's own cookies (always HttpOnly)."""
    parts = [f"{name}={value}", f"Path={path}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
        if max_age <= 0:
            parts.append("Expires=Thu, 01 Jan 1970 00:00:00 GMT")
    parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    parts.append(f"SameSite={samesite}")
    if partitioned:
        parts.append("Partitioned")
    return "; ".join(parts)


_CROSS_SITE_ATTRS: Final = frozenset({"samesite", "secure", "partitioned"})


def rewrite_set_cookie(header: str, *, samesite: SameSite, secure: bool, partitioned: bool) -> str:
    """The bot's Set-Cookie with SameSite/Secure/Partitioned replaced, for cookies in cross-site iframes."""
    first, *attrs = (part.strip() for part in header.split(";"))
    kept = [a for a in attrs if a and a.split("=", 1)[0].strip().lower() not in _CROSS_SITE_ATTRS]
    if secure:
        kept.append("Secure")
    kept.append(f"SameSite={samesite}")
    if partitioned:
        kept.append("Partitioned")
    return "; ".join([first, *kept])
