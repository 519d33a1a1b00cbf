"""Where the session id goes in a request towards the bot (a JSON body member, a path segment), and how it looks.

Parsed once at config load into the objects below; each call on the request path is a plain function of its
input. JSON bodies are parsed and re-serialised whole with the stdlib `json` (C-accelerated, linear time):
that also collapses duplicate members, so the bot can never read a second, client-chosen copy of the id.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import quote, unquote

from gateway.errors import BadRequestBody
from gateway.sessions.cookies import COOKIE_OCTETS

PLACEHOLDER: Final = "{session}"
UUID_PLACEHOLDER: Final = "{uuid}"
_BAD_ESCAPE: Final = re.compile(r"~(?![01])")
_INDEX: Final = re.compile(r"0|[1-9][0-9]*")  # RFC 6901 §4: no leading zeros, no sign
_JSON_SPACE: Final = b" \t\r\n"  # RFC 8259 §2 insignificant whitespace
# RFC 3986 pchar without "%" (always encoded) and ";" (the path-parameter delimiter, which
# Tomcat-style bots strip): what a session id may carry unencoded in a path segment
_SEGMENT_SAFE: Final = "!$&'()*+,=:@"
_PLAIN: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@]*")  # unreserved and _SEGMENT_SAFE
_DOTS: Final = frozenset({".", ".."})
_WILDCARD: Final = "*"
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# built once: json.dumps() with options builds an encoder per call
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
Verb = Literal["placed", "read"]


def parse_pointer(text: str) -> tuple[str, ...]:
    """RFC 6901: `"/a~1b/c~0d"` -> `("a/b", "c~d")`; `""` (the whole document) -> `()`."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError(f"expected a JSON Pointer starting with '/' (RFC 6901), got {text!r}")
    if _BAD_ESCAPE.search(text):
        raise ValueError(f"expected '~' to be followed by 0 or 1 in a JSON Pointer (RFC 6901), got {text!r}")
    # RFC 6901 §4: ~1 before ~0, so "~01" decodes to "~1" and not to "/"
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in text[1:].split("/"))


class Slot(NamedTuple):
    """A parsed body and where in it the session id goes."""

    doc: dict[str, Any]
    parent: dict[str, Any] | list[Any]
    key: str | int


@dataclass(frozen=True, slots=True)
class JsonPlacement:
    """A member of a JSON object body, named by a JSON Pointer, that carries the session id.

    Bodies are UTF-8 JSON (RFC 8259 §8.1); anything else raises BadRequestBody with a message naming the pointer.
    An empty body (or JSON whitespace only) counts as `{}`: a POST with no body still reaches the bot with its
    session placed, and nothing the client sent is lost. A JSON `null` on the way counts as absent.
    """

    pointer: str
    _tokens: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = parse_pointer(self.pointer)
        if not tokens:
            raise ValueError("expected a JSON Pointer to a member such as '/sender', got '' (the whole body)")
        object.__setattr__(self, "_tokens", tokens)

    def place(self, body: bytes, session_id: str) -> bytes:
        """The body with the member set to `session_id` (created with its missing parents, or replaced)."""
        return self.fill(self.locate(body), session_id)

    def locate(self, body: bytes) -> Slot:
        """Parse the body and find (creating its missing parents) where the id goes. Every fault of the
        client's body is raised here, so the proxy can refuse it before a session is started for it."""
        doc = self._load(body, "placed")
        if not isinstance(doc, dict):
            raise self._fault(f"is {_kind(doc)}, not a JSON object", "placed")
        parent: dict[str, Any] | list[Any] = doc
        last = len(self._tokens) - 1
        for depth, token in enumerate(self._tokens):
            if isinstance(parent, dict):
                if depth == last:
                    return Slot(doc, parent, token)
                child = parent.get(token)
                if child is None:  # absent or null: create it
                    child = parent[token] = {}
            else:
                if token == "-":  # RFC 6901 §4: the (nonexistent) element after the last one
                    if depth == last:
                        parent.append(None)  # filled by fill(), as often as it is called
                        return Slot(doc, parent, len(parent) - 1)
                    child = {}
                    parent.append(child)
                else:
                    index = self._index(parent, token, depth)
                    if depth == last:
                        return Slot(doc, parent, index)
                    child = parent[index]
                    if child is None:
                        child = parent[index] = {}
            if not isinstance(child, dict | list):
                raise self._fault(f"has {_kind(child)} at {self._prefix(depth + 1)}, not an object", "placed")
            parent = child
        raise AssertionError("unreachable: the pointer has at least one token")  # pragma: no cover

    def fill(self, slot: Slot, session_id: str) -> bytes:
        """The located body with `session_id` in its slot (again with another id after a re-pin)."""
        slot.parent[slot.key] = session_id  # type: ignore[index]
        return self._dump(slot.doc)

    def read(self, body: bytes) -> str | None:
        """The string at the pointer; None when absent, not a string, or the body is no JSON object."""
        node: Any = self._load(body, "read")
        if not isinstance(node, dict):
            return None
        for token in self._tokens:
            if isinstance(node, dict):
                node = node.get(token)
            elif isinstance(node, list) and _INDEX.fullmatch(token) and int(token) < len(node):
                node = node[int(token)]
            else:
                return None
        return node if isinstance(node, str) else None

    def _load(self, body: bytes, verb: Verb) -> Any:
        if not body or (body[0] in _JSON_SPACE and not body.strip(_JSON_SPACE)):
            return {}
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._fault(f"is not UTF-8 (byte {exc.start})", verb) from None
        try:
            return json.loads(text)
        except RecursionError:
            raise self._fault("nests too deeply", verb) from None
        except json.JSONDecodeError as exc:
            raise self._fault(f"is not JSON ({exc.msg} at character {exc.pos})", verb) from None
        except ValueError:  # an integer over sys.get_int_max_str_digits() (4300) digits
            raise self._fault("has a number too long to carry", verb) from None

    def _dump(self, doc: dict[str, Any]) -> bytes:
        try:
            text = _ENCODER.encode(doc)
        except RecursionError:
            raise self._fault("nests too deeply", "placed") from None
        except ValueError:  # NaN, Infinity, or beyond a double (1e400), which would come out as Infinity
            raise self._fault("has a number JSON cannot carry", "placed") from None
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate escape (\ud800) the client sent: keep it an escape, as it came
            return _ASCII_ENCODER.encode(doc).encode("ascii")

    def _index(self, array: list[Any], token: str, depth: int) -> int:
        where = self._prefix(depth)
        if not _INDEX.fullmatch(token):
            raise self._fault(f"has an array at {where}, which {token!r} cannot index", "placed")
        index = int(token)
        if index >= len(array):
            raise self._fault(
                f"has no element {index} in the array at {where} (length {len(array)})", "placed"
            )
        return index

    def _prefix(self, depth: int) -> str:
        """The pointer's first `depth` tokens, as written in the config (for messages)."""
        return "/".join(self.pointer.split("/")[: depth + 1]) or "the top level"

    def _fault(self, what: str, verb: Verb) -> BadRequestBody:
        return BadRequestBody(f"The request body {what}, so no session id can be {verb} at {self.pointer}.")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return "an array" if isinstance(value, list) else "an object"


@dataclass(frozen=True, slots=True)
class PathPlacement:
    """A path pattern with one `{session}` segment, whose value the gateway replaces with the session id.

    The rule: the pattern's segments match the leftmost contiguous run of the path's segments that fits, so
    `/sessions/{session}` also matches `/bot/sessions/x`, whatever prefix the path has. `*` is any one segment.
    `{session}` may have literal text around it in its segment (`{session}:detectIntent`); with nothing after it,
    it takes its segment up to the first ":", so a Google custom method (`:detectIntent`) survives.
    Segments match as lenient servers route them (percent-decoded, `;params` ignored, ASCII case-insensitive,
    empty and dot segments resolved), so a client cannot dodge the placement by spelling the path differently.
    Routers stranger than that (a "\\" or "%2F" taken for "/") are what `session.place_required` guards against.
    """

    pattern: str
    _literals: tuple[str, ...] = field(init=False, repr=False, compare=False)  # folded; "*" any; "" {session}
    _required: tuple[str, ...] = field(init=False, repr=False, compare=False)  # literal text a match contains
    _at: int = field(init=False, repr=False, compare=False)  # the placeholder's segment
    _head: str = field(init=False, repr=False, compare=False)  # folded literal text before {session}
    _tail: str = field(init=False, repr=False, compare=False)  # folded literal text after {session}

    def __post_init__(self) -> None:
        pattern = self.pattern
        if not pattern.startswith("/"):
            raise ValueError(f"expected a path pattern starting with '/', got {pattern!r}")
        if pattern.count(PLACEHOLDER) != 1:
            raise ValueError(f"expected exactly one {PLACEHOLDER} in the path pattern, got {pattern!r}")
        if any(c in pattern for c in "?#;"):
            raise ValueError(f"expected a path pattern without '?', '#' or ';', got {pattern!r}")
        segments = pattern[1:].split("/")
        at = next(i for i, s in enumerate(segments) if PLACEHOLDER in s)
        head, _, tail = segments[at].partition(PLACEHOLDER)
        for i, segment in enumerate(segments):
            text = head + tail if i == at else segment
            if i != at and not segment:
                raise ValueError(f"expected no empty segment in the path pattern, got {pattern!r}")
            if "{" in text or "}" in text or (_WILDCARD in text and (i == at or text != _WILDCARD)):
                raise ValueError(
                    f"expected segments that are literal text, '*', or hold {PLACEHOLDER}, got {segment!r}"
                )
        set_ = object.__setattr__
        set_(self, "_literals", tuple("" if i == at else _fold(_name(s)) for i, s in enumerate(segments)))
        set_(self, "_at", at)
        set_(self, "_required", tuple(lit for lit in self._literals if lit != _WILDCARD))
        set_(self, "_head", _fold(unquote(head)))
        set_(self, "_tail", _fold(unquote(tail)))

    def place(self, raw_path: str, session_id: str) -> str | None:
        """`raw_path` (its query kept byte-exact) with the session segment replaced; None when it does not match.

        The id is percent-encoded for a path segment: a "/" in it (an id_format template) becomes %2F.
        """
        path, sep, query = raw_path.partition("?")
        folded = _fold(path)
        if "%" in path:
            names = [_fold(_name(segment)) for segment in folded.split("/")]
        else:  # every segment's name is a substring: decide the common miss without splitting
            if not all(literal in folded for literal in self._required):
                return None
            names = [segment.partition(";")[0] for segment in folded.split("/")]
        segments = path.split("/")
        if _DOTS.intersection(names):  # resolve them first, as the bot would after our match
            segments, names = _remove_dot_segments(segments, names)
        # the non-empty segments (servers that merge "//" route on these)
        found = [(i, name) for i, name in enumerate(names) if name]
        for start in range(len(found) - len(self._literals) + 1):
            if self._matches(found, start):
                i = found[start + self._at][0]
                segments[i] = self._segment(_name(segments[i]), session_id)
                return "/".join(segments) + sep + query
        return None

    def _matches(self, found: list[tuple[int, str]], start: int) -> bool:
        for k, literal in enumerate(self._literals):
            name = found[start + k][1]
            if k == self._at:
                head, tail = self._head, self._tail
                if len(name) < len(head) + len(tail) or not (name.startswith(head) and name.endswith(tail)):
                    return False
            elif literal not in (_WILDCARD, name):
                return False
        return True

    def _segment(self, name: str, session_id: str) -> str:
        """The placeholder's segment rebuilt: the client's spelling of the literal text around the new id."""
        if self._tail:
            rest = name[len(name) - len(self._tail) :]
        else:
            _, colon, method = name[len(self._head) :].partition(":")
            rest = colon + method
        return "".join(map(_encode, (name[: len(self._head)], session_id, rest)))


def _encode(text: str) -> str:
    """Percent-encode for a path segment (most ids need nothing, and quote() is slow)."""
    return text if _PLAIN.fullmatch(text) else quote(text, safe=_SEGMENT_SAFE, errors="surrogateescape")


def _fold(text: str) -> str:
    """ASCII lowercase, which keeps the length (str.lower may not: "İ" becomes two characters)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _name(segment: str) -> str:
    """A raw path segment as a lenient server routes it: `;params` dropped (RFC 3986 §3.3), percent-decoded."""
    head = segment.partition(";")[0]
    return unquote(head, errors="surrogateescape") if "%" in head else head


def _remove_dot_segments(segments: list[str], names: list[str]) -> tuple[list[str], list[str]]:
    """RFC 3986 §5.2.4 on a split path (segments[0], before the first "/", stays)."""
    out: list[tuple[str, str]] = []
    last = len(segments) - 1
    for i in range(1, len(segments)):
        name = names[i]
        if name in _DOTS:
            if name == ".." and out:
                out.pop()
            if i == last:  # "/a/b/.." is "/a/", with its trailing slash
                out.append(("", ""))
        else:
            out.append((segments[i], name))
    return [segments[0], *(s for s, _ in out)], [names[0], *(n for _, n in out)]


@dataclass(frozen=True, slots=True)
class IdFormat:
    """How minted session ids look: "uuid4" (36 bytes), "hex32" (32) or a template holding `{uuid}` once."""

    spec: str = "uuid4"
    max_length: int = field(init=False, compare=False)  # bytes of every minted id (all ASCII)
    _head: str = field(init=False, repr=False, compare=False)
    _tail: str = field(init=False, repr=False, compare=False)
    _hex: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head = tail = ""
        if self.spec == "hex32":
            length = 32
        elif self.spec == "uuid4":
            length = 36
        elif self.spec.count(UUID_PLACEHOLDER) == 1:
            head, _, tail = self.spec.partition(UUID_PLACEHOLDER)
            literal = head + tail
            # RFC 6265 cookie-octets: the id travels in the session cookie; braces are a mistyped placeholder
            if literal and (not COOKIE_OCTETS.fullmatch(literal) or "{" in literal or "}" in literal):
                raise ValueError(
                    f"expected a template whose text outside {UUID_PLACEHOLDER} is cookie-safe "
                    f"(no spaces, quotes, commas, semicolons, backslashes or braces), got {self.spec!r}"
                )
            length = len(literal) + 36
        else:
            raise ValueError(
                f"expected 'uuid4', 'hex32' or a template with one {UUID_PLACEHOLDER}, got {self.spec!r}"
            )
        set_ = object.__setattr__
        set_(self, "max_length", length)
        set_(self, "_head", head)
        set_(self, "_tail", tail)
        set_(self, "_hex", self.spec == "hex32")

    def mint(self) -> str:
        """A new random session id (122 random bits for uuid4 and templates, 128 for hex32)."""
        if self._hex:
            return secrets.token_hex(16)
        return f"{self._head}{uuid.uuid4()}{self._tail}"
