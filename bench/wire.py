"""HTTP/1.1 answers read off a client socket's raw bytes, strictly: whatever cannot be framed with certainty
(a body cut off by the connection's end, both Content-Length and Transfer-Encoding, a bad chunk) is
`Framing`. Used by the fuzz (bench/fuzz_runner.py) and the SIGTERM test (tests/test_shutdown.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from multidict import CIMultiDict

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([1-5]\d\d)(?: [^\r\n]*)?")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE: Final = re.compile(rb"[0-9a-fA-F]{1,16}")
_MAX_HEAD: Final = 256 * 1024
_NEXT: Final = b"HTTP/1.1 "  # how the next answer begins

# Whether an answer (by its headers) was to a HEAD: True, False, or None when the reader cannot tell.
IsHead = Callable[[CIMultiDict[str]], bool | None]


class Framing(Exception):
    """What the server sent cannot be read as HTTP/1.1 answers."""


@dataclass(slots=True)
class Answer:
    """One answer as read off the wire."""

    status: int
    minor: int  # HTTP/1.<minor> on the status line
    headers: CIMultiDict[str]
    body: bytes
    upgraded: bytes | None = None  # after a 101: the new protocol's bytes, up to the connection's end

    @property
    def close(self) -> bool:
        return "close" in self.headers.get("Connection", "").lower()


def parse_answer(
    buf: bytearray, eof: bool, is_head: IsHead | None = None, maybe_head: bool = False
) -> tuple[Answer, int] | None:
    """The first answer in `buf` and the bytes it used; None until more bytes (or the end) arrive.

    A HEAD's answer says the length of a body it does not send: `is_head` tells those apart when it can;
    with `maybe_head` (a HEAD was sent), an answer it cannot tell about is bodiless when the next answer
    (or the connection's end) follows its head.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if eof and buf:
            raise Framing(f"an answer's head was cut off: {bytes(buf[:80])!r}")
        if len(buf) > _MAX_HEAD:
            raise Framing("an answer's head has no end")
        return None
    status_line, *lines = bytes(buf[:end]).split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise Framing(f"status line {status_line[:80]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise Framing(f"header line {line[:80]!r}")
        headers.add(name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
    minor, status, pos = int(match[1]), int(match[2]), end + 4
    if status == 101:
        if not eof:
            return None  # what follows is the new protocol's, to the end
        return Answer(status, minor, headers, b"", bytes(buf[pos:])), len(buf)
    head = is_head(headers) if is_head is not None else None
    bodyless = status < 200 or status in (204, 304) or bool(head)
    codings = headers.getall("Transfer-Encoding", [])
    lengths = headers.getall("Content-Length", [])
    if codings and lengths:
        raise Framing("an answer with both Transfer-Encoding and Content-Length")
    if not bodyless and head is None and maybe_head and lengths and lengths[0] != "0":
        rest = bytes(buf[pos : pos + len(_NEXT)])
        if rest == _NEXT or (eof and not rest):
            bodyless = True
        elif _NEXT.startswith(rest) and not eof:
            return None
    if bodyless:
        return Answer(status, minor, headers, b""), pos
    if codings:
        if codings != ["chunked"]:
            raise Framing(f"Transfer-Encoding {codings!r}")
        return _chunked(buf, pos, eof, Answer(status, minor, headers, b""))
    if lengths:
        if len(lengths) != 1 or not lengths[0].isdigit():
            raise Framing(f"Content-Length {lengths!r}")
        size = int(lengths[0])
        if len(buf) - pos >= size:
            return Answer(status, minor, headers, bytes(buf[pos : pos + size])), pos + size
        if eof:
            raise Framing(f"a body was cut off: {len(buf) - pos} of {size} bytes")
        return None
    if not eof:
        return None  # the body ends with the connection
    return Answer(status, minor, headers, bytes(buf[pos:])), len(buf)


def _chunked(buf: bytearray, pos: int, eof: bool, answer: Answer) -> tuple[Answer, int] | None:
    parts = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            break
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0]
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise Framing(f"chunk size {size_text[:40]!r}")
        size = int(size_text, 16)
        pos = line_end + 2
        if size == 0:
            while True:  # trailer fields, then the blank line
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    break
                blank, pos = line_end == pos, line_end + 2
                if blank:
                    answer.body = b"".join(parts)
                    return answer, pos
            break
        if len(buf) < pos + size + 2:
            break
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise Framing("a chunk without its CRLF")
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2
    if eof:
        raise Framing("a chunked body was cut off")
    return None
