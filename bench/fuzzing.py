"""Raw HTTP/1.x requests for fuzzing the proxy port (issue 16): valid requests, their mutations, framing
attacks, odd bytes and plain garbage.

Seeded per case: `generate(seed, n)` is the same bytes on every run and whatever order cases run in, so
a failure names its case and `generate` reproduces it. tests/test_fuzz.py runs a few thousand cases,
bench/fuzz.py 100,000; both through bench/fuzz_runner.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

CASE_HEADER: Final = b"X-Fuzz-Case"
PROBE_PATH: Final = "probe"
HOST: Final = b"gw.example"
# The gateway's settings for a fuzz run (section -> key -> value): short client timeouts, so truncated
# requests end fast, and a small request buffer, so bodies stream too.
MAX_BODY: Final = 256 * 1024
SETTINGS: Final[dict[str, dict[str, float | int | bool]]] = {
    "listen": {"header_timeout": 0.3, "body_timeout": 0.3, "keepalive_timeout": 0.6, "send_timeout": 5.0},
    "upstream": {"buffer_request_body": 2048, "max_body_size": MAX_BODY, "read_timeout": 10.0},
}
# Paths the recording bot answers in different ways (bench/fuzz_runner.py Bot.handle).
BOT_PATHS: Final = ("chat", "chat", "chat", "stream", "sse", "big", "slow", "login", "empty", "x/endsession")
METHODS: Final = (b"GET", b"GET", b"POST", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"HEAD")
SESSION_COOKIE: Final = b"JSESSIONID"
SESSION_HEADER: Final = b"X-Teneo-Session"
# Session values a client may send: fine ones, and bytes no session id may hold (400 bad_session_header).
SESSION_VALUES: Final = (
    b"s1",
    b"s42",
    b"31992FA776A35DABA3291A4EE1031B5F",
    b"",
    b" ",
    b"\xff",
    b"\xff\xfe\xfd",
    b"\x80abc",
    b"caf\xc3\xa9",
    b"a\x00b",
    b"a\x01b",
    b"a\x7fb",
    b'"quoted"',
    b'"',
    b"a,b",
    b"a\\b",
    b"a b",
    b"x" * 129,
    b"%ff%00",
    b"=",
    b"==;;==",
)
ODD_BYTES: Final = (b"\x00", b"\x01", b"\x7f", b"\x80", b"\xff", b"\r", b"\n", b"\t", b" ", b":", b";", b'"')


@dataclass(frozen=True, slots=True)
class Case:
    """One connection's worth of client bytes, written as `parts` with `pauses` (seconds) between them."""

    number: int
    kind: str
    parts: tuple[bytes, ...]
    pauses: tuple[float, ...] = ()
    # A valid GET sent after the parts: its answer proves every earlier answer arrived (answers keep order),
    # so the connection can be reused. Without it the case ends when the gateway closes the connection.
    probe: bool = True
    # Statuses the first answer must have; then nothing of the case may reach the bot.
    refused: frozenset[int] = field(default_factory=frozenset)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def case_tag(number: int) -> bytes:
    """The X-Fuzz-Case value: the case number and a check number, so a mutated value is never another's."""
    return b"%d.%d" % (number, number * 7919 % 10007)


def parse_tag(value: str | None) -> int | None:
    """The case number an X-Fuzz-Case value names, or None when it was mutated."""
    number = (value or "").partition(".")[0]
    if not number.isdigit() or len(number) > 9 or case_tag(int(number)).decode() != value:
        return None
    return int(number)


def probe_request(number: int) -> bytes:
    return b"GET /c/%d/%s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n\r\n" % (
        number,
        PROBE_PATH.encode(),
        HOST,
        CASE_HEADER,
        case_tag(number),
    )


# --- a valid request, as parts that mutations change -------------------------------------------------


@dataclass(slots=True)
class Message:
    """A request's request line, header lines (raw, so a line may lack its colon) and framed body."""

    method: bytes
    target: bytes
    version: bytes
    lines: list[bytes]
    body: bytes = b""
    eol: bytes = b"\r\n"

    def render(self) -> bytes:
        head = [b"%s %s %s" % (self.method, self.target, self.version), *self.lines]
        return self.eol.join(head) + self.eol + self.eol + self.body

    def set(self, name: bytes, value: bytes) -> None:
        self.drop(name)
        self.lines.append(name + b": " + value)

    def drop(self, name: bytes) -> None:
        prefix = name.lower() + b":"
        self.lines = [line for line in self.lines if not line.lower().startswith(prefix)]

    def has(self, name: bytes) -> bool:
        prefix = name.lower() + b":"
        return any(line.lower().startswith(prefix) for line in self.lines)


def chunked(body: bytes, rng: random.Random) -> bytes:
    """`body` in random chunks, sizes in either case, now and then with a chunk extension."""
    out, i = [], 0
    while i < len(body):
        size = rng.randint(1, max(1, min(len(body) - i, rng.choice((1, 7, 100, 4096)))))
        digits = b"%x" % size if rng.random() < 0.8 else b"%X" % size
        ext = b";ext=1" if rng.random() < 0.1 else b""
        out.append(digits + ext + b"\r\n" + body[i : i + size] + b"\r\n")
        i += size
    return b"".join(out) + b"0\r\n\r\n"


def valid(rng: random.Random, number: int, method: bytes | None = None) -> Message:
    """A well-formed request a browser or widget could send, tagged with the case number."""
    method = method or rng.choice(METHODS)
    target = b"/c/%d/%s" % (number, rng.choice(BOT_PATHS).encode())
    if rng.random() < 0.3:
        target += b"?userinput=hi&n=%d" % rng.randint(0, 99)
    version = b"HTTP/1.1" if rng.random() < 0.9 else b"HTTP/1.0"
    lines = [b"Host: " + HOST, CASE_HEADER + b": " + case_tag(number)]
    if rng.random() < 0.5:
        lines.append(b"User-Agent: fuzz/1.0")
    if rng.random() < 0.3:
        lines.append(b"Accept: */*")
    if rng.random() < 0.2:
        lines.append(b"Cookie: %s=s%d; theme=dark" % (SESSION_COOKIE, rng.randint(0, 30)))
    if version == b"HTTP/1.0" and rng.random() < 0.5:
        lines.append(b"Connection: keep-alive")
    elif rng.random() < 0.1:
        lines.append(b"Connection: close")
    message = Message(method, target, version, lines)
    if method in (b"POST", b"PUT", b"PATCH") or rng.random() < 0.05:
        size = rng.choice((0, 1, 12, 300, 1500, 3000, 9000))
        body = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
        body = body[:size]
        if rng.random() < 0.1:  # what a front proxy would see as a second request
            body = b"GET /c/%d/smuggled HTTP/1.1\r\nHost: x\r\n\r\n" % number
        if rng.random() < 0.25 and version == b"HTTP/1.1":
            message.lines.append(b"Transfer-Encoding: chunked")
            message.body = chunked(body, rng)
        else:
            message.lines.append(b"Content-Length: %d" % len(body))
            message.body = body
        if rng.random() < 0.1:
            message.lines.append(b"Expect: 100-continue")
    rng.shuffle(message.lines)
    return message


# --- mutations of a Message -----------------------------------------------------------------------------

Mutation = Callable[[random.Random, Message], None]


def _method(rng: random.Random, m: Message) -> None:
    m.method = rng.choice(
        (
            b"CONNECT",
            b"TRACE",
            b"get",
            b"G ET",
            b"FOO",
            b"PROPFIND",
            b"M-SEARCH",
            b"PRI",
            b"PURGE",
            b"",
            b"\x00",
            b"GET\xff",
            b"M" * 300,
            b"SOURCE",
            b"QUERY",
            b"LINK",
        )
    )


def _target(rng: random.Random, m: Message) -> None:
    choices = (
        b"*",
        b"http://evil.example" + m.target,
        b"https://gw.example:443" + m.target,
        b"//" + m.target,
        b"/a b",
        m.target + b"\x00",
        m.target + b"\xff\xfe",
        m.target + b"%00%zz",
        m.target + b"/..%2f..%2f",
        m.target + b"?" + b"q" * rng.choice((100, 8300)),
        m.target + b";jsessionid=" + rng.choice(SESSION_VALUES),
        m.target + b";JSESSIONID=s1;x=y",
        m.target + b"#frag",
        b"",
        b"gw.example:443",
        m.target + b"\x7f",
        m.target.replace(b"/", b"\\"),
        b"/_gateway/session-client.js",
    )
    m.target = rng.choice(choices)


def _version(rng: random.Random, m: Message) -> None:
    m.version = rng.choice(
        (
            b"HTTP/1.0",
            b"HTTP/2.0",
            b"HTTP/0.9",
            b"HTTP/1.2",
            b"HTTP/3.0",
            b"HTTP/1",
            b"HTTP/11",
            b"http/1.1",
            b"HTTP/1.1 extra",
            b"",
            b"HTTP/9.9",
            b"HTTP/1.1\x00",
            b"HTTZ/1.1",
        )
    )


def _odd_header(rng: random.Random, m: Message) -> None:
    odd = rng.choice(ODD_BYTES)
    line = rng.choice(
        (
            b"X-Odd: a" + odd + b"b",
            b"X-Odd" + odd + b"Name: v",
            b"X-Odd : v",
            b"NoColonHere",
            b": empty-name",
            odd + b"X-Odd: v",
            b"X-Odd: " + bytes(rng.getrandbits(8) for _ in range(20)),
            b"X-Long: " + b"v" * rng.choice((5000, 17000)),
            b"X-" + b"n" * 17000 + b": v",
            b"X-Fold: a\r\n  folded",
            b"X-Tab:\tv\t",
            b"X-Utf8: caf\xc3\xa9",
        )
    )
    m.lines.insert(rng.randint(0, len(m.lines)), line)


def _many_headers(rng: random.Random, m: Message) -> None:
    m.lines.extend(b"X-H%d: %d" % (i, i) for i in range(rng.choice((20, 127, 200))))


def _content_length(rng: random.Random, m: Message) -> None:
    size = len(m.body)
    value = rng.choice(
        (
            b"+%d" % size,
            b"-%d" % size,
            b"0%d" % size,
            b"0" * rng.choice((20, 2000)) + b"%d" % size,
            b" %d " % size,
            b"%d %d" % (size, size),
            b"%d,%d" % (size, size),
            b"0x%x" % size,
            b"",
            b"99999999999999999999999",
            b"%d" % (size + rng.randint(1, 50)),
            b"%d" % max(0, size - rng.randint(1, 10)),
            b"%d" % (size + 10**9),
        )
    )
    if rng.random() < 0.7:
        m.drop(b"Content-Length")
    m.lines.append(b"Content-Length: " + value)


def _transfer_encoding(rng: random.Random, m: Message) -> None:
    value = rng.choice(
        (
            b"chunked",
            b"gzip, chunked",
            b"chunked, gzip",
            b"identity",
            b"Chunked",
            b"chunked ",
            b"\tchunked",
            b"xchunked",
            b"chunked\x00",
            b"chunked, chunked",
            b"",
            b"cHuNkEd",
        )
    )
    if rng.random() < 0.5:
        m.lines.append(b"Transfer-Encoding: " + value)
    else:
        m.lines.insert(0, b"Transfer-Encoding: " + value)
    if rng.random() < 0.5 and b"chunked" in value.lower():
        m.body = chunked(m.body or b"hello", rng)


def _bad_chunks(rng: random.Random, m: Message) -> None:
    m.drop(b"Content-Length")
    m.set(b"Transfer-Encoding", b"chunked")
    m.body = rng.choice(
        (
            b"g\r\nhello\r\n0\r\n\r\n",
            b"-1\r\nx\r\n0\r\n\r\n",
            b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
            b"5\r\nhello0\r\n\r\n",
            b"5\nhello\n0\n\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"00000000000000000005\r\nhello\r\n0\r\n\r\n",
            b'5;a="b"\r\nhello\r\n0\r\n\r\n',
            b"a\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"5\r\nhello\r\n",
            b"\r\n",
            b"5\r\nhel",
        )
    )


def _session(rng: random.Random, m: Message) -> None:
    value = rng.choice(SESSION_VALUES)
    where = rng.randrange(4)
    if where == 0:
        m.set(b"Cookie", SESSION_COOKIE + b"=" + value)
    elif where == 1:
        m.set(SESSION_HEADER, SESSION_COOKIE + b"=" + value)
    elif where == 2:
        m.set(SESSION_HEADER, rng.choice((value, b"garbage", b"a=b; " + value)))
    else:
        m.set(b"Cookie", b"GatewayAffinity=" + value + b"; " + SESSION_COOKIE + b"=s1")


def websocket_handshake(m: Message) -> None:
    m.method = b"GET"
    m.set(b"Upgrade", b"websocket")
    m.set(b"Connection", b"Upgrade")
    m.set(b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")
    m.set(b"Sec-WebSocket-Version", b"13")


def _upgrade(rng: random.Random, m: Message) -> None:
    kind = rng.randrange(3)
    if kind == 0:
        websocket_handshake(m)
        if rng.random() < 0.5:
            m.drop(rng.choice((b"Sec-WebSocket-Key", b"Sec-WebSocket-Version", b"Connection")))
    elif kind == 1:
        m.set(b"Upgrade", rng.choice((b"h2c", b"TLS/1.2", b"websocket, h2c", b"\xff")))
        m.set(b"Connection", b"Upgrade, HTTP2-Settings")
        m.set(b"HTTP2-Settings", b"AAMAAABkAAQCAAAAAAIAAAAA")
    else:
        m.set(b"Connection", rng.choice((b"Upgrade", b"close, Upgrade", b"keep-alive, X-Fuzz-Case", b"TE")))


def _expect(rng: random.Random, m: Message) -> None:
    m.set(b"Expect", rng.choice((b"100-continue", b"100-Continue", b"200-ok", b"", b"100-continue, x")))


def _host(rng: random.Random, m: Message) -> None:
    choice = rng.randrange(4)
    if choice == 0:
        m.drop(b"Host")
    elif choice == 1:
        m.lines.append(b"Host: other.example")
    else:
        m.set(b"Host", rng.choice((b"", b"a b", b"gw.example:99999", b"\xff", b"[::1]:80", b"x" * 300)))


def _connection(rng: random.Random, m: Message) -> None:
    m.set(
        b"Connection", rng.choice((b"close", b"keep-alive", b"Keep-Alive", b"close, keep-alive", b"cookie"))
    )


def _line_endings(rng: random.Random, m: Message) -> None:
    m.eol = rng.choice((b"\n", b"\r", b"\r\r\n", b"\n\r"))


MUTATIONS: Final[tuple[Mutation, ...]] = (
    _method,
    _target,
    _version,
    _odd_header,
    _odd_header,
    _many_headers,
    _content_length,
    _content_length,
    _transfer_encoding,
    _transfer_encoding,
    _bad_chunks,
    _session,
    _session,
    _upgrade,
    _expect,
    _host,
    _connection,
    _line_endings,
)


def _bytes_mutation(rng: random.Random, data: bytes) -> bytes:
    """A change no structure knows about: a byte replaced, inserted or deleted, a range repeated."""
    if not data:
        return data
    at = rng.randrange(len(data))
    kind = rng.randrange(4)
    if kind == 0:
        return data[:at] + bytes([rng.getrandbits(8)]) + data[at + 1 :]
    if kind == 1:
        return data[:at] + rng.choice(ODD_BYTES) + data[at:]
    if kind == 2:
        return data[:at] + data[at + rng.randint(1, 8) :]
    end = min(len(data), at + rng.randint(1, 40))
    return data[:end] + data[at:end] + data[end:]


# --- cases ----------------------------------------------------------------------------------------------


def _split(rng: random.Random, data: bytes, slow: bool = True) -> tuple[tuple[bytes, ...], tuple[float, ...]]:
    """`data` cut into a few parts sent with pauses: mostly short, now and then past the head timeout."""
    if len(data) < 2 or rng.random() < 0.5:
        return (data,), ()
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
    parts = tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))
    pauses = tuple(
        rng.choice((0.0, 0.0, 0.002, 0.02)) if not slow or rng.random() < 0.97 else 0.4 for _ in parts[1:]
    )
    return parts, pauses


def _valid_case(rng: random.Random, n: int) -> Case:
    parts, pauses = _split(rng, valid(rng, n).render())
    return Case(n, "valid", parts, pauses)


def _pipeline_case(rng: random.Random, n: int) -> Case:
    data = b"".join(valid(rng, n).render() for _ in range(rng.randint(2, 5)))
    parts, pauses = _split(rng, data, slow=False)
    return Case(n, "pipeline", parts, pauses)


def _mutated_case(rng: random.Random, n: int) -> Case:
    message = valid(rng, n)
    for mutation in rng.sample(MUTATIONS, rng.choice((1, 1, 1, 2, 3))):
        mutation(rng, message)
    data = message.render()
    if rng.random() < 0.2:
        data = _bytes_mutation(rng, data)
    if rng.random() < 0.15:  # a valid request behind it: pipelined after whatever the mutation did
        data += valid(rng, n).render()
    parts, pauses = _split(rng, data)
    return Case(n, "mutated", parts, pauses, probe=rng.random() < 0.85)


def _truncated_case(rng: random.Random, n: int) -> Case:
    data = valid(rng, n, rng.choice((b"POST", b"GET"))).render()
    data = data[: rng.randrange(1, len(data))]
    return Case(n, "truncated", (data,), probe=rng.random() < 0.3)


def _garbage_case(rng: random.Random, n: int) -> Case:
    kind = rng.randrange(5)
    if kind == 0:
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice((1, 10, 100, 3000))))
    elif kind == 1:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))) + b"\r\n\r\n"
    elif kind == 2:
        data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"
    elif kind == 3:
        data = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(rng.getrandbits(8) for _ in range(64))
    else:
        data = b"\r\n" * rng.randint(1, 3) + valid(rng, n).render()  # RFC 9112 §2.2: leading CRLFs ignored
    return Case(n, "garbage", (data,), probe=rng.random() < 0.5)


def _refused_case(rng: random.Random, n: int) -> Case:
    """A request the front end must refuse, with the status(es) that may say so; nothing reaches the bot."""
    m = valid(rng, n, b"POST")
    m.drop(b"Content-Length")
    m.drop(b"Transfer-Encoding")
    m.drop(b"Expect")
    m.drop(b"Connection")
    smuggled = b"GET /c/%d/smuggled HTTP/1.1\r\nHost: x\r\n%s: %s\r\n\r\n" % (n, CASE_HEADER, case_tag(n))
    choice = rng.randrange(18)
    statuses = frozenset({400})
    if choice == 0:
        m.method, m.target = b"CONNECT", rng.choice((b"gw.example:443", b"/c/%d/x" % n))
        m.body = smuggled if rng.random() < 0.7 else b""
        if m.body:
            m.set(b"Content-Length", b"%d" % len(m.body))
        statuses = frozenset({400, 405})
    elif choice == 1:
        m.method, m.body = b"TRACE", b""
        statuses = frozenset({405})
    elif choice == 2:
        m.lines += [b"Content-Length: %d" % len(smuggled), b"Transfer-Encoding: chunked"]
        m.body = b"0\r\n\r\n" + smuggled
    elif choice == 3:
        m.lines += [b"Transfer-Encoding: chunked", b"Content-Length: 5"]
        m.body = b"0\r\n\r\n" + smuggled
    elif choice == 4:
        m.lines += [b"Content-Length: 5", b"Content-Length: %d" % rng.choice((5, 6, 50))]
        m.body = b"hello" + smuggled
    elif choice == 5:
        m.version = rng.choice((b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0", b"HTTP/9.9"))
        m.method, m.body = b"GET", b""
        statuses = frozenset({400, 505})
    elif choice == 6:
        m.lines.append(b"X-Fold: a\r\n folded")
    elif choice == 7:
        m.lines.append(b"X-Nul: a\x00b")
    elif choice == 8:
        _bad_chunks(rng, m)
        m.body = rng.choice((b"g\r\nhello\r\n0\r\n\r\n", b"-1\r\nx\r\n0\r\n\r\n", b"5\r\nhello0\r\n\r\n"))
        m.body += smuggled
    elif choice == 9:
        m.lines += [b"Expect: 200-ok", b"Content-Length: 5"]
        m.body = b"hello"
        statuses = frozenset({417})
    elif choice == 10:
        m.lines.append(b"Content-Length: %d" % (MAX_BODY + 1))
        m.body = b"x" * 100
        statuses = frozenset({413})
    elif choice == 11:
        m.method, m.target = b"GET", m.target + b"?" + b"q" * 9000
        statuses = frozenset({414})
    elif choice == 12:
        m.lines.append(b"X-Long: " + b"v" * 17000)
        statuses = frozenset({431})
    elif choice == 13:
        m.lines.extend(b"X-H%d: %d" % (i, i) for i in range(130))
        statuses = frozenset({431})
    elif choice == 14:
        m.method, m.eol = b"GET", b"\n"
    elif choice == 15:
        m.lines += [b"Transfer-Encoding: chunked"]
        m.body = b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    elif choice == 16:
        m.lines.append(b"X-Space : v")
    else:
        m.method, m.body = b"GET", b""
        m.set(b"Cookie", SESSION_COOKIE + b"=" + rng.choice((b"\xff", b"\x80abc", b"a\x01b", b"x" * 129)))
    return Case(n, "refused", (m.render(),), refused=statuses)


def _websocket_case(rng: random.Random, n: int) -> Case:
    m = valid(rng, n, b"GET")
    websocket_handshake(m)
    if rng.random() < 0.3:
        m.set(b"Content-Length", b"5")
        m.body = b"hello"
    data = m.render()
    if rng.random() < 0.3:
        data += valid(rng, n).render()  # bytes after a handshake: the new protocol's, never a request
    return Case(n, "websocket", (data,), probe=False)


KINDS: Final = (
    (_valid_case, 20),
    (_pipeline_case, 10),
    (_mutated_case, 40),
    (_truncated_case, 5),
    (_garbage_case, 5),
    (_refused_case, 15),
    (_websocket_case, 5),
)
_MAKERS, _WEIGHTS = zip(*KINDS, strict=True)


def generate(seed: int, number: int) -> Case:
    """Case `number` of the run seeded with `seed`."""
    rng = random.Random(f"{seed}:{number}")
    (maker,) = rng.choices(_MAKERS, _WEIGHTS)
    case: Case = maker(rng, number)
    return case
