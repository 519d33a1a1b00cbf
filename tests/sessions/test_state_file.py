"""session.state_file (gateway/sessions/store/state_file.py): the memory store's sessions across a graceful restart.

The format round-trips and refuses what it cannot read; the store restores a snapshot, ending what expired
while the gateway was down exactly once; the file is written atomically, read once and set aside when
unreadable, and no problem with it stops the gateway; a real `serve` process keeps a conversation across
SIGTERM and a restart, and writes nothing when SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from aiohttp import web
from conftest_tools import unavailable
from gateway_helpers import SpawnGateway, StartUpstream
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from session_helpers import Bot, FakeClock, P, StartRig, make_session_config

from gateway.app import create_store
from gateway.config import Config, SessionConfig
from gateway.demo import create_bot_app
from gateway.errors import ConfigError
from gateway.ops.metrics import Metrics
from gateway.sessions.manager import SessionManager
from gateway.sessions.store import Outcome, TombReason, state_file
from gateway.sessions.store.memory import MemoryStore, Snapshot
from gateway.sessions.store.state_file import StateFileError, decode, encode
from gateway.upstream.upstreams import Upstreams

IDLE = 600.0
ABSOLUTE = 2000.0
TTL = 1800.0
T0 = 1_700_000_000.0
AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
SLOW = 0.3  # seconds the bot thinks over a request in flight at SIGTERM


def file_bytes(snapshot: Snapshot, saved_at: float = T0) -> bytes:
    return b"".join(encode(snapshot, saved_at))


def manager(clock: FakeClock, **session: Any) -> tuple[SessionManager, MemoryStore, CollectorRegistry]:
    """A session manager on a fresh memory store and registry, as create_app builds one."""
    options = {"idle_timeout": IDLE, "absolute_timeout": ABSOLUTE, "tombstone_ttl": TTL, **session}
    config = make_session_config("http://127.0.0.1:1", session=options)
    store = create_store(config)
    assert isinstance(store, MemoryStore)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    return (
        SessionManager(config.session, store, metrics, Upstreams(config.upstream, metrics), clock),
        store,
        registry,
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(P + name, labels) or 0.0


async def load(store: MemoryStore, path: Path, now: float, max_bytes: int = 1 << 30) -> list[Any]:
    return await state_file.load(store, str(path), now, max_bytes)


# --- the format -----------------------------------------------------------------------------------------

ids = st.text("0123456789ABCDEFabcdef-_.!#$%&'*+/:<=>?@[]^`{|}~", min_size=1, max_size=40)
times = st.floats(allow_nan=False, allow_infinity=False)
records = st.tuples(
    times, times, times, st.integers(-(2**63), 2**63 - 1), st.sampled_from(["default", "b1", "bot-2"]), times
)
tombs = st.tuples(st.sampled_from(get_args(TombReason)), st.none() | ids, times)


@given(st.dictionaries(ids, records, max_size=30), st.dictionaries(ids, tombs, max_size=30), times)
def test_the_file_round_trips_every_field(
    sessions: dict[str, Any], tombstones: dict[str, Any], at: float
) -> None:
    decoded, saved_at = decode(file_bytes(Snapshot(dict(sessions), dict(tombstones)), at))
    assert saved_at == at
    assert {k: r[:5] for k, r in decoded.sessions.items()} == {k: r[:5] for k, r in sessions.items()}
    assert decoded.tombstones == tombstones


def _foreign_version(data: bytes) -> bytes:
    return data[:8] + (state_file.VERSION + 1).to_bytes(4, "little") + data[12:]


def _flipped(data: bytes) -> bytes:
    return data[:-5] + bytes([data[-5] ^ 0x01]) + data[-4:]


UNREADABLE = {
    "empty": (lambda d: b"", "not a session-gateway state file"),
    "foreign": (lambda d: b'{"sessions": []}', "not a session-gateway state file"),
    "newer version": (_foreign_version, f"format version {state_file.VERSION + 1}"),
    "truncated in the header": (lambda d: d[:14], "truncated"),
    "truncated in the body": (lambda d: d[: len(d) // 2], "truncated"),
    "one byte short": (lambda d: d[:-1], "truncated"),
    "a byte too many": (lambda d: d + b"\0", "corrupt"),
    "a flipped bit": (_flipped, "checksum mismatch"),
}


def _small_snapshot() -> Snapshot:
    sessions = {f"S{i:031X}": (T0 + i, T0 + i, IDLE, i, "default", 0.0) for i in range(50)}
    return Snapshot(sessions, {"OLD": ("idle", "S0", T0 + TTL), "GONE": ("client", None, T0 + TTL)})


@pytest.mark.parametrize("case", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_decode_refuses_what_it_cannot_read(case: Any) -> None:
    damage, message = case
    with pytest.raises(StateFileError, match=message):
        decode(damage(file_bytes(_small_snapshot())))


# --- the store ------------------------------------------------------------------------------------------


async def test_a_restart_at_10k_sessions_counts_each_expiry_while_down_once(
    clock: FakeClock, tmp_path: Path
) -> None:
    """10k sessions of every kind (idle timeouts of their own, touched, ended) saved, the clock moved on
    while "down", and restored: what expired meanwhile ends once, for the reason the sweeper would have
    given (idle, or lifetime once past ABSOLUTE); everything else comes back as it was."""
    path = tmp_path / "sessions.state"
    before, store, _ = manager(clock)
    for i in range(10_000):
        sid = f"{i:032X}"
        await store.create(sid, T0 + i * 0.05, idle_timeout=IDLE, replica=("b1", "b2")[i % 2])  # 0-500 s
        if i % 7 == 0:
            await store.set_idle_timeout(sid, 60.0)
        elif i % 3 == 0:
            await store.set_idle_timeout(sid, 3 * ABSOLUTE)  # only the lifetime ends it
    for i in range(0, 10_000, 5):
        if i % 7:
            assert (await store.touch(f"{i:032X}", T0 + 500 + i * 0.01)).outcome is Outcome.LIVE
    for i in range(3, 10_000, 11):
        await store.end(f"{i:032X}", T0 + 550, "client")
    clock.now = T0 + 600
    assert await before.sweep() > 0  # the gateway swept until its shutdown
    saved = store.snapshot()
    state_file.save(store, str(path), clock())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    clock.now = T0 + ABSOLUTE + 100  # down for a while: idle ends, and the oldest sessions' lifetimes
    now = clock()
    expected, durations, live = {"idle": 0, "lifetime": 0}, 0.0, {}
    for sid, (created, last_seen, idle, *rest) in saved.sessions.items():
        deadline = min(last_seen + idle, created + ABSOLUTE)
        if deadline > now:
            live[sid] = (created, last_seen, idle, *rest[:2])
            continue
        expected["lifetime" if now >= created + ABSOLUTE else "idle"] += 1
        durations += deadline - created  # ended at the deadline: the downtime after it is not the session's
    assert expected["idle"] > 1000 and expected["lifetime"] > 1000 and len(live) > 1000

    after, restored, registry = manager(clock)
    await after.restore(await load(restored, path, now))

    assert not path.exists()  # read once
    ends = {reason: sample(registry, "sessions_ended_total", reason=reason) for reason in expected}
    assert ends == expected
    assert sample(registry, "sessions_active") == len(live) == await restored.count()
    assert sample(registry, "session_duration_seconds_count") == sum(expected.values())
    assert sample(registry, "session_duration_seconds_sum") == pytest.approx(durations)
    kept = restored.snapshot().sessions
    assert {k: r[:5] for k, r in kept.items()} == live
    assert await after.sweep() == 0  # nothing left to end twice
    assert {
        reason: sample(registry, "sessions_ended_total", reason=reason) for reason in expected
    } == expected
    gone = next(k for k in saved.sessions if k not in kept)
    touch = await restored.touch(gone, now)
    assert touch.outcome is Outcome.ENDED and touch.ended_reason in ("idle", "lifetime")
    assert sample(registry, "sessions_started_total", reason="first") == 0  # restored, not started


async def test_restore_past_max_sessions_evicts_those_nearest_expiry(
    clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "sessions.state"
    _, store, _ = manager(clock)
    for i in range(100):
        await store.create(f"S{i:03}", T0 + i, idle_timeout=IDLE, replica="default")
    state_file.save(store, str(path), T0 + 100)

    after, smaller, registry = manager(clock, max_sessions=60)
    clock.now = T0 + 100
    await after.restore(await load(smaller, path, clock()))

    assert sorted(smaller.snapshot().sessions) == [f"S{i:03}" for i in range(40, 100)]
    assert sample(registry, "sessions_ended_total", reason="evicted") == 40
    assert sample(registry, "sessions_active") == 60


async def test_restore_keeps_successors_and_drops_forgotten_tombstones(tmp_path: Path) -> None:
    path = tmp_path / "sessions.state"
    store = create_store(make_session_config("http://127.0.0.1:1", session={"tombstone_ttl": TTL}))
    assert isinstance(store, MemoryStore)
    await store.create("OLD", T0, idle_timeout=IDLE, replica="default")
    await store.end("EARLY", T0, "client")  # never live: no tombstone
    await store.end("OLD", T0 + 10, "client")
    await store.create("NEW", T0 + 20, idle_timeout=2 * TTL, replica="default", previous="OLD")
    await store.create("GONE", T0, idle_timeout=IDLE, replica="default")
    await store.end("GONE", T0 + 1, "bot")
    state_file.save(store, str(path), T0 + 30)

    restored = create_store(make_session_config("http://127.0.0.1:1", session={"tombstone_ttl": TTL}))
    assert isinstance(restored, MemoryStore)
    assert await load(restored, path, T0 + TTL + 5) == []  # GONE's tombstone is forgotten by then

    assert restored.snapshot().tombstones.keys() == {"OLD"}
    touch = await restored.touch("OLD", T0 + TTL + 5)
    assert (touch.outcome, touch.successor) == (Outcome.ENDED, "NEW")
    assert (await restored.touch("GONE", T0 + TTL + 5)).outcome is Outcome.MISSING


async def test_restore_refuses_a_store_in_use() -> None:
    store = create_store(make_session_config("http://127.0.0.1:1"))
    assert isinstance(store, MemoryStore)
    await store.create("LIVE", T0, idle_timeout=IDLE, replica="default")
    with pytest.raises(RuntimeError, match="empty store"):
        await store.restore(Snapshot({}, {}), T0)


# --- the file at start and at shutdown ------------------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gateway"]


async def test_a_missing_file_is_a_cold_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway")
    store = create_store(make_session_config("http://127.0.0.1:1"))
    assert isinstance(store, MemoryStore)
    assert await load(store, tmp_path / "sessions.state", T0) == []
    assert _lines(caplog) == [
        (logging.INFO, f"session.state_file {tmp_path}/sessions.state does not exist: starting empty")
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", list(UNREADABLE.values()), ids=list(UNREADABLE))
async def test_an_unreadable_file_is_set_aside_and_the_store_starts_empty(
    case: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damage, message = case
    path = tmp_path / "sessions.state"
    data = damage(file_bytes(_small_snapshot()))
    path.write_bytes(data)
    store = create_store(make_session_config("http://127.0.0.1:1"))
    assert isinstance(store, MemoryStore)

    assert await load(store, path, T0) == []

    assert await store.count() == 0
    (aside,) = tmp_path.iterdir()
    assert aside.name.startswith("sessions.state.corrupt-") and aside.read_bytes() == data
    ((level, line),) = _lines(caplog)
    assert level == logging.WARNING and message in line and f"set aside as {aside}" in line


async def test_a_file_over_the_size_bound_is_set_aside_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sessions.state"
    path.write_bytes(file_bytes(_small_snapshot()))
    store = create_store(make_session_config("http://127.0.0.1:1"))
    assert isinstance(store, MemoryStore)
    assert await load(store, path, T0, max_bytes=1000) == []
    assert await store.count() == 0 and not path.exists()
    ((_, line),) = _lines(caplog)
    assert "more than this configuration's 1000" in line
    # The bound leaves room for a full store at the longest ids.
    config = SessionConfig(max_sessions=1000, max_tombstones=1000, max_id_length=128)
    full = {f"{i:0128}": (T0, T0, IDLE, 1, "default", 0.0) for i in range(1000)}
    tombs: dict[str, Any] = {f"{i:0128}": ("idle", f"{i + 1:0128}", T0) for i in range(1000)}
    assert len(file_bytes(Snapshot(full, tombs))) <= state_file.size_bound(config) / 2


async def test_save_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sessions.state"
    path.write_bytes(b"an older file")
    store = create_store(make_session_config("http://127.0.0.1:1"))
    assert isinstance(store, MemoryStore)
    await store.create("LIVE", T0, idle_timeout=IDLE, replica="default")
    (tmp_path / f"sessions.state.tmp-{os.getpid()}").write_bytes(b"left by a killed process with our pid")

    state_file.save(store, str(path), T0)

    assert [p.name for p in tmp_path.iterdir()] == ["sessions.state"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert decode(path.read_bytes())[0].sessions.keys() == {"LIVE"}


async def test_an_unwritable_directory_is_reported_at_start_and_at_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At start one ERROR line (and the store starts empty); at shutdown one ERROR line, no exception, and
    the sessions are still in memory."""
    caplog.set_level(logging.INFO, "gateway")
    store = create_store(make_session_config("http://127.0.0.1:1"))
    assert isinstance(store, MemoryStore)
    missing = tmp_path / "no-such-dir" / "sessions.state"
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")

    assert await load(store, missing, T0) == []
    assert await load(store, not_a_dir / "sessions.state", T0) == []
    await store.create("LIVE", T0, idle_timeout=IDLE, replica="default")
    state_file.save(store, str(missing), T0)

    assert await store.count() == 1
    assert _lines(caplog) == [
        (
            logging.ERROR,
            f"session.state_file {missing} cannot be written (No such file or directory): "
            "sessions will not survive a restart",
        ),
        (
            logging.ERROR,
            f"session.state_file {not_a_dir}/sessions.state cannot be written (Not a directory): "
            "sessions will not survive a restart",
        ),
        (
            logging.ERROR,
            f"could not save 1 sessions to session.state_file {missing} (No such file or directory): "
            "they end with this process",
        ),
    ]


def test_config_state_file_needs_the_memory_store() -> None:
    with pytest.raises(ConfigError, match=r"session\.state_file") as raised:
        SessionConfig(store="redis", state_file="/var/lib/session-gateway/sessions.state")
    assert "only the memory store" in str(raised.value)
    with pytest.raises(ConfigError, match="expected a file path"):
        SessionConfig(state_file="/var/lib/session-gateway/")
    assert SessionConfig(state_file="sessions.state").state_file == "sessions.state"
    assert Config().session.state_file == ""  # off by default


# --- the app --------------------------------------------------------------------------------------------


async def test_the_app_saves_on_cleanup_and_restores_at_start(
    demo: Bot, rig_for: StartRig, clock: FakeClock, tmp_path: Path
) -> None:
    """Two conversations; the gateway stops; while it is down one of them idles out. At the next start
    the other continues with no X-Session-New and the idle one is counted once and answered `expired`."""
    path = str(tmp_path / "sessions.state")
    first = await rig_for(demo.url, state_file=path)
    kept = (await first.send()).session_id
    idle = (await first.send()).session_id
    assert kept and idle
    clock.advance(300)
    assert (await first.send(header=kept)).turn == 2
    await first.client.close()  # the app's cleanup saves
    clock.advance(IDLE - 100)  # `idle` is past its deadline, `kept` is not

    second = await rig_for(demo.url, state_file=path)
    assert second.active == 1 and second.ended("idle") == 1

    reply = await second.send(header=kept)
    assert (reply.status, reply.new, reply.session_id, reply.turn) == (200, None, kept, 3)
    reply = await second.send(header=idle)
    assert reply.new == "expired"
    assert second.ended("idle") == 1 and second.started("expired") == 1


# --- the process: SIGTERM, SIGKILL, a read-only directory -----------------------------------------------


async def _metric(http: aiohttp.ClientSession, admin_url: str, name: str, **labels: str) -> float:
    async with http.get(admin_url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == P + name and s.labels == labels:
                return float(s.value)
    return 0.0


async def _turn(
    http: aiohttp.ClientSession, url: str, sid: str | None = None, query: str = ""
) -> tuple[str, str | None, int]:
    """One demo-bot turn: (session id, X-Session-New, the bot's turn counter)."""
    headers = {"X-Teneo-Session": f"JSESSIONID={sid}"} if sid else {}
    async with http.get(f"{url}/?userinput=hi{query}", headers=headers) as response:
        assert response.status == 200
        body = await response.json()
        return (
            response.headers["X-Session-Id"],
            response.headers.get("X-Session-New"),
            int(body["output"]["parameters"]["turn"]),
        )


def _slow_on_request(received: asyncio.Event) -> web.Application:
    """The demo bot, thinking SLOW seconds over a request with `&slow` (`received` is set when it starts)."""
    app = create_bot_app()

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> web.StreamResponse:
        if "slow" in request.query:
            received.set()
            await asyncio.sleep(SLOW)
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(slow)
    return app


@pytest.mark.slow
async def test_sigterm_keeps_conversations_and_sigkill_writes_nothing(
    spawn_gateway: SpawnGateway, start_upstream: StartUpstream, tmp_path: Path
) -> None:
    """A real `serve`: two conversations, the second one's first request still at the bot when SIGTERM
    comes (drained, then saved with it), a restart (restored: the conversations go on, and sessions_active
    counts them before any request), SIGKILL (nothing written), a cold restart."""
    received = asyncio.Event()
    bot = await start_upstream(_slow_on_request(received))
    state = tmp_path / "state"
    state.mkdir()
    path = state / "sessions.state"
    env = {"GATEWAY_SESSION_STATE_FILE": str(path), "GATEWAY_LOG_ACCESS": "false"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        first = await spawn_gateway(upstream_url=bot, **env)
        a, new, _ = await _turn(http, first.url)
        assert new == "first" and (await _turn(http, first.url, a))[2] == 2
        in_flight = asyncio.create_task(_turn(http, first.url, query="&slow"))
        await asyncio.wait_for(received.wait(), 5)
        first.terminate()
        b, new, _ = await in_flight
        assert new == "first"
        assert await first.exit_code(10) == 0
        assert "saved 2 sessions and 0 tombstones" in first.stderr()
        assert [p.name for p in state.iterdir()] == ["sessions.state"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        second = await spawn_gateway(upstream_url=bot, **env)
        assert "restored 2 sessions and 0 tombstones" in second.stderr()
        assert await _metric(http, second.admin_url, "sessions_active") == 2
        assert await _turn(http, second.url, a) == (a, None, 3)
        assert await _turn(http, second.url, b) == (b, None, 2)
        assert await _metric(http, second.admin_url, "sessions_started_total", reason="adopted") == 0
        second.proc.send_signal(signal.SIGKILL)
        assert await second.exit_code(10) == -signal.SIGKILL
        assert list(state.iterdir()) == []  # read at start, and nothing written since: no file, no temporary

        third = await spawn_gateway(upstream_url=bot, **env)
        assert "does not exist: starting empty" in third.stderr()
        assert await _metric(http, third.admin_url, "sessions_active") == 0
        assert await _turn(http, third.url, a) == (a, None, 4)  # the bot still knows it: adopted, cold
        assert await _metric(http, third.admin_url, "sessions_started_total", reason="adopted") == 1


@pytest.mark.slow
async def test_a_read_only_directory_is_reported_and_the_gateway_still_serves_and_exits_0(
    spawn_gateway: SpawnGateway, start_upstream: StartUpstream
) -> None:
    """A directory the gateway's user cannot write: one ERROR line at start, one at shutdown, exit 0."""
    program: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes anywhere: the gateway runs as nobody to meet the permission
        if shutil.which("setpriv") is None:  # util-linux: on every Debian, so CI must have it
            unavailable("setpriv", "it comes with util-linux; the test runs the gateway as nobody")
        program = (*AS_NOBODY, sys.executable, "-m", "gateway")
    bot = await start_upstream(create_bot_app())
    directory = Path(tempfile.mkdtemp(prefix="sg-read-only-"))  # tmp_path's parents are private to its owner
    try:
        directory.chmod(0o555)
        path = directory / "sessions.state"
        gw = await spawn_gateway(
            upstream_url=bot,
            program=program,
            GATEWAY_SESSION_STATE_FILE=str(path),
            GATEWAY_LOG_ACCESS="false",
        )
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            await _turn(http, gw.url)
        gw.terminate()
        assert await gw.exit_code(10) == 0
        errors = [line for line in gw.stderr().splitlines() if "state_file" in line]
        assert len(errors) == 2, gw.stderr()
        assert "cannot be written (Permission denied)" in errors[0]
        assert "could not save 1 sessions" in errors[1] and "(Permission denied)" in errors[1]
        assert list(directory.iterdir()) == []
    finally:
        with contextlib.suppress(OSError):
            directory.chmod(0o700)
            directory.rmdir()
