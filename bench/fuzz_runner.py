"""Run fuzz cases (bench/fuzzing.py) against a gateway over raw loopback sockets, in front of a recording bot,
and tally what came back.

Every bot answer carries a sequence number (`X-Bot-Seq`, and in a WebSocket's first frame) that the bot
records with the request. After a run, `verify` checks that each request the bot answered reached the client
that sent it, once: the gateway forwarded nothing it did not answer as one request. Each answer the client
reads is checked as it is parsed: HTTP/1.1 framing, no 5xx but the allowed ones, an error answer in the
gateway's JSON, a bot answer's body byte for byte.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from bench.fuzzing import PROBE_PATH, Case, generate, parse_tag, probe_request
from bench.wire import Answer, Framing, parse_answer

LOOPBACK: Final = "127.0.0.1"
SEQ_HEADER: Final = "X-Bot-Seq"
BIG: Final = 100 * 1024  # bytes of the bot's "big" answer: past the proxy's whole-body limit, so it streams
_WS_SEQ: Final = re.compile(rb"bot-seq=(\d+)")
_PATH_CASE: Final = re.compile(r"/c/(\d{1,9})/")
_EXAMPLES: Final = 40  # anomalies kept in full; the rest are only counted


# --- the recording bot ------------------------------------------------------------------------------------


@dataclass(slots=True)
class BotRequest:
    """One request the bot answered."""

    seq: int
    method: str
    path: str
    case: int | None  # from X-Fuzz-Case, when it came through intact
    kind: str
    body_size: int
    upgraded: bool = False  # answered with a WebSocket handshake

    @property
    def probe(self) -> bool:
        return self.case is not None and self.path == f"/c/{self.case}/{PROBE_PATH}"


def _kind(path: str) -> str:
    for kind in ("stream", "sse", "big", "slow", "login", "empty"):
        if kind in path:
            return kind
    return "chat"


def answer_seq(headers: CIMultiDict[str]) -> int | None:
    """The bot's sequence number in an answer's headers."""
    value = headers.get(SEQ_HEADER, "")
    return int(value) if value.isdigit() else None


def bot_body(seq: int, kind: str) -> bytes:
    """The body the bot sends for answer `seq`; the client checks it byte for byte."""
    piece = b"bot-seq=%d;" % seq
    if kind == "empty":
        return b""
    if kind == "big":
        return (piece * (BIG // len(piece) + 1))[:BIG]
    if kind == "stream":
        return piece * 3
    if kind == "sse":
        return b"data: %s\n\n" % piece * 3
    return piece


class Bot:
    """A well-behaved bot that records every request it answers (after reading its whole body)."""

    def __init__(self) -> None:
        self.seen: list[BotRequest] = []
        self.unread = 0  # requests whose body never arrived whole (the gateway gave up on them)
        self.busy = 0

    def app(self) -> web.Application:
        app = web.Application(handler_args={"max_field_size": 32 * 1024})
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def is_head(self, headers: CIMultiDict[str]) -> bool | None:
        """Whether an answer was the bot's to a HEAD; None for the gateway's own answers."""
        seq = answer_seq(headers)
        return None if seq is None or seq >= len(self.seen) else self.seen[seq].method == "HEAD"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.busy += 1
        try:
            return await self._answer(request)
        finally:
            self.busy -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except Exception:  # the gateway gave up on a streamed body (the client's was bad or late)
            self.unread += 1
            return web.Response(status=400)  # to a connection that is gone: nobody reads it
        path = request.raw_path.split("?", 1)[0]
        kind = _kind(path)
        seq = len(self.seen)
        case = parse_tag(request.headers.get("X-Fuzz-Case"))
        ws = web.WebSocketResponse()
        upgrade = ws.can_prepare(request).ok
        self.seen.append(BotRequest(seq, request.method, path, case, kind, len(body), upgrade))
        headers = {SEQ_HEADER: str(seq)}
        piece = b"bot-seq=%d;" % seq
        if upgrade:
            ws.headers.update(headers)
            await ws.prepare(request)
            await ws.send_bytes(piece)
            await ws.close()
            return ws
        if kind == "slow":
            await asyncio.sleep(0.02)
        if kind == "login":
            headers["Set-Cookie"] = f"JSESSIONID=s{seq}; Path=/"
        if kind == "empty":
            return web.Response(status=204, headers=headers)
        if kind in ("stream", "sse"):
            response = web.StreamResponse(headers=headers)
            if kind == "sse":
                response.content_type = "text/event-stream"
            await response.prepare(request)
            for _ in range(3 if request.method != "HEAD" else 0):  # aiohttp would send a HEAD's body
                await response.write(piece if kind == "stream" else b"data: %s\n\n" % piece)
            await response.write_eof()
            return response
        return web.Response(body=bot_body(seq, kind), headers=headers)


# --- known gateway issues ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownIssue:
    """A gateway bug the fuzz finds, reported and pinned by a strict xfail in tests/test_fuzz.py. Its
    anomalies are counted apart, so that the fuzz still fails on anything else."""

    name: str
    anomaly: str
    applies: Callable[[Case, Tally], bool]
    logs_error: bool = False  # each occurrence logs one ERROR line (with its traceback)


def _websocket(case: Case) -> bool:
    return b"upgrade: websocket" in case.data.lower()


# Gateway bugs the fuzz meets, counted apart while they are open (the four it found first, WebSocket handshakes
# handed to aiohttp's server unjudged, are fixed: tests/test_fuzz.py pins them).
KNOWN_ISSUES: Final[tuple[KnownIssue, ...]] = ()


# --- the tally ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What a run saw: counts, and anomalies (a few in full)."""

    cases: int = 0
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    answers: int = 0  # answers to the cases' own requests (not the probes')
    probes: int = 0  # probe answers: connections proven clean, and reused
    connections: int = 0
    closed_without_answer: int = 0  # the gateway closed without a byte of answer
    resets: int = 0
    late_starts: int = 0  # closed without answer, but the case started late or the event loop stalled in it
    upgraded: int = 0
    anomalies: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    delivered: dict[int, int] = field(default_factory=dict)  # bot seq -> connection that got it
    case_connection: dict[int, int] = field(default_factory=dict)
    refused_cases: set[int] = field(default_factory=set)
    upgrades: collections.Counter[int] = field(default_factory=collections.Counter)  # 101s by connection
    first_status: dict[int, int] = field(default_factory=dict)  # case -> its first final answer's status
    known: collections.Counter[str] = field(default_factory=collections.Counter)  # KNOWN_ISSUES met
    seconds: float = 0.0

    def anomaly(self, what: str, case: Case | None, detail: str = "") -> None:
        about = f"case {case.number} ({case.kind}) {case.data[:300]!r}" if case else ""
        for issue in KNOWN_ISSUES:
            if issue.anomaly == what and case is not None and issue.applies(case, self):
                if not self.known[issue.name]:
                    self.examples.append(f"known issue {issue.name}: {what}: {detail} {about}".strip())
                self.known[issue.name] += 1
                return
        self.anomalies[what] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"{what}: {detail} {about}".strip())

    def known_error_lines(self) -> int:
        """ERROR log lines the known issues met account for."""
        return sum(self.known[issue.name] for issue in KNOWN_ISSUES if issue.logs_error)

    def classes(self) -> dict[str, int]:
        out: collections.Counter[str] = collections.Counter()
        for status, count in self.statuses.items():
            out[f"{status // 100}xx"] += count
        return dict(sorted(out.items()))

    def report(self, bot: Bot) -> str:
        """The counts, one per line."""
        five = {status: n for status, n in sorted(self.statuses.items()) if status >= 500}
        lines = [
            f"cases                  {self.cases} in {self.seconds:.1f} s on {self.connections} connections",
            f"by kind                {dict(sorted(self.kinds.items()))}",
            f"answers                {self.answers} (+ {self.probes} probe answers)",
            f"by status class        {self.classes()}",
            f"5xx by status          {five}",
            f"4xx by status          {dict(sorted((s, n) for s, n in self.statuses.items() if 400 <= s < 500))}",
            f"upgraded (101)         {self.upgraded}",
            f"closed without answer  {self.closed_without_answer} ({self.late_starts} after a late start)",
            f"connection resets      {self.resets}",
            f"bot requests           {len(bot.seen)} answered, {bot.unread} given up mid-body",
            f"anomalies              {sum(self.anomalies.values())} {dict(self.anomalies)}",
            f"known gateway issues   {sum(self.known.values())} {dict(self.known)}",
        ]
        lines += [f"  {example}" for example in self.examples]
        return "\n".join(lines)


# --- running cases ------------------------------------------------------------------------------------------


class _Conn:
    """A client socket read as a browser's would be: bytes received before a reset are still read."""

    def __init__(self, number: int, sock: socket.socket) -> None:
        self.number = number
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.idle_since = time.monotonic()  # opened, or its last case ended

    @classmethod
    async def open(cls, number: int, port: int) -> _Conn:
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each part its own segment
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
        except BaseException:
            sock.close()
            raise
        return cls(number, sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def fill(self) -> None:
        try:
            data = await self.loop.sock_recv(self.sock, 65536)
        except ConnectionError:
            self.reset, data = True, b""
        if data:
            self.buf += data
        else:
            self.eof = True

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class Runner:
    """Cases against the gateway on `port`, the bot behind it; `allowed_5xx` are no anomaly."""

    port: int
    bot: Bot
    seed: int = 0
    allowed_5xx: frozenset[int] = frozenset({505})
    case_timeout: float = 10.0
    # Seconds a connection may wait between cases (or after connecting), under listen.header_timeout, which
    # closes a silent new connection quietly: a stalled event loop then does not pass for a gateway bug.
    max_idle: float = 0.2
    tally: Tally = field(default_factory=Tally)
    _opened: int = 0
    # When the shared event loop (runner and gateway run in one process) last stalled past max_idle: the
    # gateway's timers may then see a connection silent that was not, and close it quietly.
    _stalled_at: float = 0.0

    async def run(self, cases: int, *, start: int = 0, concurrency: int = 32, seconds: float = 1e9) -> Tally:
        """Run cases start..start+cases on `concurrency` connections at once, for at most `seconds`."""
        numbers = iter(range(start, start + cases))
        began = time.monotonic()
        deadline = began + seconds

        async def worker() -> None:
            conn: _Conn | None = None
            for number in numbers:
                if time.monotonic() > deadline:
                    break
                case = generate(self.seed, number)
                if conn is not None and time.monotonic() - conn.idle_since > self.max_idle:
                    conn.close()
                    conn = None
                if conn is None:
                    conn = await self._open()
                if await self.run_case(conn, case):
                    conn.idle_since = time.monotonic()
                else:
                    conn.close()
                    conn = None
            if conn is not None:
                conn.close()

        watch = asyncio.get_running_loop().create_task(self._watch_stalls())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            watch.cancel()
        await self._settle()
        self.tally.seconds += time.monotonic() - began
        return self.tally

    async def _watch_stalls(self, tick: float = 0.01) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - before - tick > self.max_idle:
                self._stalled_at = now

    async def _open(self) -> _Conn:
        self._opened += 1
        self.tally.connections += 1
        return await _Conn.open(self._opened, self.port)

    async def _settle(self) -> None:
        """Let bot handlers still running (for clients long gone) finish before `verify` counts."""
        deadline = time.monotonic() + 5
        while self.bot.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def run_case(self, conn: _Conn, case: Case) -> bool:
        """Send the case, read its answers; True when the connection may carry the next case."""
        tally = self.tally
        tally.cases += 1
        tally.kinds[case.kind] += 1
        tally.case_connection[case.number] = conn.number
        if case.refused:
            tally.refused_cases.add(case.number)
        began = time.monotonic()
        late = began - conn.idle_since > self.max_idle
        try:
            answers = await asyncio.wait_for(self._exchange(conn, case), self.case_timeout)
        except TimeoutError:
            tally.anomaly("hung", case, f"no end within {self.case_timeout:g} s")
            return False
        except Framing as exc:
            tally.anomaly("bad framing", case, str(exc))
            return False
        if conn.reset:
            tally.resets += 1
        if not answers and conn.eof and not conn.buf:
            tally.closed_without_answer += 1
            if late or self._stalled_at >= began:  # the loop stalled during the case: as good as late
                tally.late_starts += 1  # the gateway may rightly have closed the silent connection
            else:
                tally.anomaly("closed without answer", case)
        final = [answer.status for answer in answers if answer.status >= 200 or answer.status == 101]
        if final:
            tally.first_status[case.number] = final[0]
        if case.refused and (not answers or answers[0].status not in case.refused):
            got = answers[0].status if answers else "nothing"
            tally.anomaly("not refused", case, f"expected {sorted(case.refused)}, got {got}")
        maybe_closed = False
        for answer in answers:
            if maybe_closed:
                tally.anomaly("answer after Connection: close", case)
            maybe_closed = answer.close
            self._check(answer, case, conn)
        probed = bool(answers) and self._is_probe(answers[-1], case)
        return probed and not answers[-1].close and not conn.eof

    async def _exchange(self, conn: _Conn, case: Case) -> list[Answer]:
        try:
            for i, part in enumerate(case.parts):
                if i and case.pauses[i - 1]:
                    await asyncio.sleep(case.pauses[i - 1])
                await conn.send(part)
            if case.probe:
                await conn.send(probe_request(case.number))
        except ConnectionError:
            pass  # refused and closed before it all went out: its answer may still be there to read
        answers: list[Answer] = []
        maybe_head = b"HEAD" in case.data
        while True:
            parsed = parse_answer(conn.buf, conn.eof, self.bot.is_head, maybe_head)
            if parsed is not None:
                answer, used = parsed
                del conn.buf[:used]
                answers.append(answer)
                if self._is_probe(answer, case) or answer.status == 101:
                    return answers
                continue
            if conn.eof:
                return answers
            await conn.fill()

    def verify(self) -> Tally:
        """Every request the bot answered reached, once, the connection of the case that sent it; no
        refused case reached the bot. Call after `run`."""
        tally = self.tally
        upgrades = tally.upgrades.copy()
        for seen in self.bot.seen:
            connection = tally.delivered.get(seen.seq)
            about = f"seq {seen.seq} {seen.method} {seen.path} (case {seen.case})"
            named = seen.case if seen.case is not None else _path_case(seen.path)  # the tag may be mutated
            case = generate(self.seed, named) if named in tally.case_connection else None
            own = tally.case_connection.get(named) if named is not None else None
            if connection is None and seen.upgraded and own is not None and upgrades[own] > 0:
                # A WebSocket the client closed (its bytes were no frames) before the bot's frame crossed:
                # the 101 it got on that connection was this handshake's.
                upgrades[own] -= 1
                connection = own
            if connection is None:
                what = (
                    "bot WebSocket handshake never delivered"
                    if seen.upgraded
                    else "bot answer never delivered"
                )
                tally.anomaly(what, case, about)
            elif seen.case is not None and own != connection:
                tally.anomaly("bot answer delivered to another connection", case, about)
            if seen.case in tally.refused_cases and not seen.probe:
                # The probe is a request of its own: a refusal that kept the connection open serves it.
                tally.anomaly("refused request reached the bot", case, about)
        return tally

    def _is_probe(self, answer: Answer, case: Case) -> bool:
        seq = answer_seq(answer.headers)
        if seq is None or seq >= len(self.bot.seen):
            return False
        seen = self.bot.seen[seq]
        return seen.probe and seen.case == case.number

    def _check(self, answer: Answer, case: Case, conn: _Conn) -> None:
        tally = self.tally
        seq = answer_seq(answer.headers)
        if answer.status == 101:
            tally.upgraded += 1
            tally.upgrades[conn.number] += 1
            found = _WS_SEQ.search(answer.upgraded or b"")
            seq = int(found[1]) if found else None
        if seq is not None:
            if seq in tally.delivered:
                tally.anomaly("one bot answer delivered twice", case, f"seq {seq}")
            tally.delivered[seq] = conn.number
        if answer.minor != 1:
            tally.anomaly("status line not HTTP/1.1", case, f"HTTP/1.{answer.minor} {answer.status}")
        if answer.status < 200 and answer.status != 101:
            return  # 100 Continue
        if self._is_probe(answer, case):
            tally.probes += 1
            return
        tally.answers += 1
        tally.statuses[answer.status] += 1
        if answer.status >= 500 and answer.status not in self.allowed_5xx:
            tally.anomaly(f"{answer.status}", case, answer.body[:200].decode("latin-1"))
        if seq is not None and answer.status != 101 and seq < len(self.bot.seen):
            seen = self.bot.seen[seq]
            expected = b"" if seen.method == "HEAD" else bot_body(seq, seen.kind)
            if answer.body != expected:
                tally.anomaly("bot body changed", case, f"seq {seq}: {answer.body[:80]!r}")
        elif answer.status >= 400 and answer.body and not _is_error_body(answer.body):
            tally.anomaly("error from neither gateway nor bot", case, repr(answer.body[:120]))


def _path_case(path: str) -> int | None:
    found = _PATH_CASE.match(path)
    return int(found[1]) if found else None


def _is_error_body(body: bytes) -> bool:
    with contextlib.suppress(ValueError, AttributeError):
        error = json.loads(body).get("error", {})
        return isinstance(error, dict) and isinstance(error.get("code"), str)
    return False
