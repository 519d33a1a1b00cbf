"""The JS session client as published, run in Node (>= 18, global fetch) and checked by TypeScript.

`npm pack` in clients/js builds the package (its prepack copies gateway/static/session-client.js and .d.ts, the one
source); the tarball is installed as node_modules/session-gateway-client of a scratch project, and every script
here imports it by name, so "main", "exports" and "types" are exercised as a widget's bundler would. The client talks
to a hand-written server speaking the wire contract (ContractGateway), to one acting out the deferred answers of
[deferred] (DeferringGateway), and to the real gateway: in process (create_app) and as `python -m gateway serve`.

Without Node, npm or TypeScript (tests/ts, `npm ci`) these skip; under CI=true they fail.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest_tools import REPO, executable, unavailable
from gateway_helpers import SpawnGateway
from prometheus_client import CollectorRegistry
from served import GatewayTestServer

from gateway.app import create_app
from gateway.config import load_config
from gateway.demo import create_bot_app
from gateway.edge.client import client_script

pytestmark = pytest.mark.slow

NODE_HINT = "install Node.js >= 18 and npm (Debian: nodejs, npm; scripts/_node_setup.sh does, as root)"
PACKAGE_DIR = REPO / "clients" / "js"
SOURCE_DIR = REPO / "gateway" / "static"
TS_DIR = REPO / "tests" / "ts"  # TypeScript, pinned by its package-lock.json, and usage.ts
NPM_ENV = {"npm_config_update_notifier": "false", "npm_config_fund": "false", "npm_config_audit": "false"}


@dataclass(frozen=True, slots=True)
class Published:
    """The npm package as `npm pack` built it, installed in a scratch project (`consumer`)."""

    node: str
    npm: str
    name: str
    tarball: Path
    members: list[str]  # paths inside the tarball, without its "package/" prefix
    consumer: Path  # the project whose node_modules/<name> is the unpacked tarball

    @property
    def installed(self) -> Path:
        return self.consumer / "node_modules" / self.name


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **NPM_ENV}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    node = executable("node", NODE_HINT)
    npm = executable("npm", NODE_HINT)
    version = _run([node, "-p", "process.versions.node"], REPO).stdout.strip()
    if int(version.split(".")[0]) < 18:
        unavailable(f"Node.js >= 18 (found {version})", NODE_HINT)
    # Pack a copy of clients/js and gateway/static, so the prepack and postpack scripts never touch the checkout.
    work = tmp_path_factory.mktemp("npm")
    tree = work / "tree"
    shutil.copytree(
        PACKAGE_DIR,
        tree / "clients" / "js",
        ignore=shutil.ignore_patterns("node_modules", "*.tgz", "session-client.js", "session-client.d.ts"),
    )
    shutil.copytree(SOURCE_DIR, tree / "gateway" / "static")
    packed = _run([npm, "pack", "--pack-destination", str(work), "--loglevel=error"], tree / "clients" / "js")
    assert packed.returncode == 0, packed.stderr
    (tarball,) = work.glob("*.tgz")
    name = json.loads((PACKAGE_DIR / "package.json").read_text())["name"]
    consumer = work / "consumer"
    installed = consumer / "node_modules" / name
    installed.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        members = [m.name.removeprefix("package/") for m in archive.getmembers() if m.isfile()]
        for member in archive.getmembers():
            member.name = member.name.removeprefix("package/")
            archive.extract(member, installed, filter="data")
    (consumer / "package.json").write_text('{"private": true, "type": "module"}\n')
    return Published(node, npm, name, tarball, sorted(members), consumer)


# --- what npm publishes ---------------------------------------------------------------------------------------


def test_the_tarball_holds_the_served_client_and_its_types(published: Published) -> None:
    assert published.members == ["README.md", "package.json", "session-client.d.ts", "session-client.js"]
    types = (published.installed / "session-client.d.ts").read_bytes()
    assert types == (SOURCE_DIR / "session-client.d.ts").read_bytes()


def test_package_metadata(published: Published) -> None:
    import gateway

    meta = json.loads((published.installed / "package.json").read_text())
    assert meta["version"] == gateway.__version__  # one version for the gateway and its client
    assert meta["type"] == "module"
    assert meta["main"] == "./session-client.js"
    assert meta["types"] == "./session-client.d.ts"
    assert meta["exports"] == {".": {"types": "./session-client.d.ts", "default": "./session-client.js"}}
    assert meta["engines"] == {"node": ">=18"}


def typescript(published: Published) -> Path:
    """tsc from tests/ts/node_modules, installed there by `npm ci` (pinned by its lock file) when missing."""
    tsc = TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists():
        installed = _run([published.npm, "ci", "--loglevel=error"], TS_DIR, timeout=300)
        if installed.returncode != 0 or not tsc.exists():
            unavailable(
                "TypeScript (tests/ts/node_modules)", f"run `npm ci` in tests/ts: {installed.stderr[-500:]}"
            )
    return tsc


def test_types_check_a_widget_strictly(published: Published) -> None:
    """tests/ts/usage.ts uses every export as a widget would and holds misuse that must not compile, through
    the package's "types": `tsc --noEmit --strict` passes only if the .d.ts is neither wrong nor too loose."""
    tsc = typescript(published)
    shutil.copy(TS_DIR / "usage.ts", published.consumer / "usage.ts")
    flags = ["--noEmit", "--strict", "--target", "es2022", "--lib", "es2022,dom"]
    checked = _run(
        [
            published.node,
            str(tsc),
            *flags,
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "usage.ts",
        ],
        published.consumer,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_served_bytes_are_the_published_bytes(published: Published) -> None:
    """What `npm publish` ships is what the gateway serves at client.path (tests/edge/test_client.py fetches that)."""
    assert (published.installed / "session-client.js").read_bytes() == client_script()


# --- the client in Node ---------------------------------------------------------------------------------------

PRELUDE = """
import { SessionClient, SessionClientError } from %(package)s;
const started = Date.now();
const events = [];
const client = (options = {}) => new SessionClient({
  endpoint: %(endpoint)s,
  storage: null,
  onInterim: (answer) => events.push({ interim: answer, at: Date.now() - started }),
  onNewSession: (event) => events.push({ newSession: event }),
  ...options,
});
/** A sessionStorage stand-in: what a reload of the tab would find. */
function memoryStorage() {
  const map = new Map();
  return {
    map,
    getItem: (key) => (map.has(key) ? map.get(key) : null),
    setItem: (key, value) => void map.set(key, String(value)),
    removeItem: (key) => void map.delete(key),
  };
}
async function outcome(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    const isClientError = error instanceof SessionClientError;
    return { error: { name: error.name, status: error.status ?? null, body: error.body ?? null, isClientError } };
  }
}
const report = (fields) => console.log(JSON.stringify({ events, ...fields }));
"""


def new_sessions(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [event["newSession"] for event in report["events"] if "newSession" in event]


RunClient = Callable[..., Awaitable[dict[str, Any]]]  # (target: web.Application | str, script, path="/")


@pytest.fixture
def run_client(published: Published, aiohttp_server: Any) -> RunClient:
    """run(target, script, path="/") -> what the script reported: the published client in Node, with `client()`
    making a SessionClient for `path` on `target` (an aiohttp app served on loopback, or a gateway's URL)."""

    async def run(target: web.Application | str, script: str, path: str = "/") -> dict[str, Any]:
        if isinstance(target, web.Application):
            target = str((await aiohttp_server(target)).make_url("/"))
        endpoint = target.rstrip("/") + path
        prelude = PRELUDE % {"package": json.dumps(published.name), "endpoint": json.dumps(endpoint)}
        proc = await asyncio.create_subprocess_exec(
            published.node,
            "--input-type=module",
            "-e",
            prelude + script,
            cwd=published.consumer,  # where node_modules/<name> resolves
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, err.decode()
        report: dict[str, Any] = json.loads(out)
        return report

    return run


# --- (a) against a server speaking the wire contract --------------------------------------------------------

COOKIE_STRING = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+=[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*")


@dataclass(slots=True)
class Exchange:
    """One request as ContractGateway saw it."""

    method: str
    path: str
    carried: str | None  # the session header (X-Teneo-Session unless configured otherwise)
    cookie: str | None
    userinput: str | None
    parameters: dict[str, str]


class ContractGateway:
    """The gateway's session contract as a client sees it (README, "The wire contract"), acted out by hand.

    In: the session is the `cookie` pair of the `header` (`JSESSIONID=<id>; GatewayAffinity=<pair>`); a value that
    is not a cookie string answers 400 bad_session_header. Out: every answer with a session names it in
    X-Session-Id (unless `id_in_header` is off: a Teneo engine without the gateway, the id in the JSON only) and
    X-Gateway-Session (the pair first, then attributes); the first answer of a new session carries X-Session-New:
    first (nothing presented), unknown, ended, or expired (a session after `expire_after` turns). A POST to
    <endpoint>/endsession ends the session and answers the logout JSON with an empty X-Gateway-Session.
    """

    def __init__(
        self,
        *,
        cookie: str = "JSESSIONID",
        header: str = "X-Teneo-Session",
        expire_after: int | None = None,
        id_in_header: bool = True,
    ) -> None:
        self.cookie, self.header, self.expire_after, self.id_in_header = (
            cookie,
            header,
            expire_after,
            id_in_header,
        )
        self.turns: dict[str, int] = {}
        self.ended: set[str] = set()
        self.seen: list[Exchange] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    @staticmethod
    def pair(session_id: str) -> str:
        return f"GatewayAffinity=r1.{session_id[:8].lower()}"

    async def handle(self, request: web.Request) -> web.Response:
        form: dict[str, str] = {}
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        carried = request.headers.get(self.header)
        userinput = form.pop("userinput", None)
        exchange = Exchange(
            request.method, request.path, carried, request.headers.get("Cookie"), userinput, form
        )
        self.seen.append(exchange)
        parts = [part.strip() for part in carried.split(";")] if carried else []
        if not all(COOKIE_STRING.fullmatch(part) for part in parts):
            error = {"code": "bad_session_header", "message": f"{self.header} is not a cookie string"}
            return web.json_response({"error": error}, status=400)
        presented = dict(part.split("=", 1) for part in parts).get(self.cookie)
        if request.path.rstrip("/").endswith("/endsession"):
            if presented in self.turns:
                del self.turns[presented]
                self.ended.add(presented)
            return web.json_response({"status": 1, "message": "logout"}, headers={"X-Gateway-Session": ""})
        session_id, reason = presented, None
        if presented is None:
            reason = "first"
        elif presented in self.ended:
            reason = "ended"
        elif presented not in self.turns:
            reason = "unknown"
        elif self.expire_after is not None and self.turns[presented] >= self.expire_after:
            reason = "expired"
            del self.turns[presented]
        if reason is not None:
            session_id = uuid.uuid4().hex.upper()
            self.turns[session_id] = 0
        assert session_id is not None
        self.turns[session_id] += 1
        headers = {"X-Gateway-Session": f"{self.pair(session_id)}; Path=/"}
        if self.id_in_header:
            headers["X-Session-Id"] = session_id
        if reason is not None:
            headers["X-Session-New"] = reason
        body = {
            "status": 0,
            "input": {"text": userinput or "", "parameters": form},
            "output": {
                "text": f"You said: {userinput}",
                "emotion": "",
                "link": "",
                "parameters": {"turn": str(self.turns[session_id])},
            },
            "sessionId": session_id,
        }
        return web.json_response(body, headers=headers)

    def carried(self, session_id: str) -> str:
        return f"{self.cookie}={session_id}; {self.pair(session_id)}"


async def test_a_conversation_carries_the_session_and_its_pair(run_client: RunClient) -> None:
    contract = ContractGateway()
    script = """
const chat = client();
const before = { id: chat.sessionId, carried: chat.sessionHeader(), persistent: chat.persistent };
const answers = [await chat.send("hi", { channel: "web" }), await chat.send("again"), await chat.send("more")];
report({ before, turns: answers.map((a) => a.output.parameters.turn), id: chat.sessionId,
         carried: chat.sessionHeader(), storageKey: chat.storageKey, endpoint: chat.endpoint.href });
"""
    report = await run_client(contract.app, script, "/engine/")

    (sid,) = contract.turns
    assert report["before"] == {"id": None, "carried": None, "persistent": False}
    assert report["turns"] == ["1", "2", "3"]
    assert report["id"] == sid
    assert report["carried"] == contract.carried(sid)  # the pair without its "; Path=/"
    assert report["storageKey"] == "session-gateway:" + report["endpoint"].rsplit("/engine/", 1)[0]
    assert [(e.method, e.path, e.carried, e.cookie) for e in contract.seen] == [
        ("POST", "/engine/", None, None),
        ("POST", "/engine/", contract.carried(sid), None),  # in the header: Node's fetch keeps no cookies
        ("POST", "/engine/", contract.carried(sid), None),
    ]
    assert [(e.userinput, e.parameters) for e in contract.seen] == [
        ("hi", {"channel": "web"}),
        ("again", {}),
        ("more", {}),
    ]
    assert new_sessions(report) == [{"reason": "first", "sessionId": sid, "previousSessionId": None}]


async def test_expired_and_ended_sessions_are_signalled_with_the_previous_id(run_client: RunClient) -> None:
    contract = ContractGateway(expire_after=1)
    script = """
const chat = client();
const turns = [];
turns.push((await chat.send("one")).output.parameters.turn);
const first = chat.sessionId;
turns.push((await chat.send("two")).output.parameters.turn);  // the gateway says the first one expired
const second = chat.sessionId;
const ended = await chat.end();
const afterEnd = { id: chat.sessionId, carried: chat.sessionHeader(), body: await ended.json(),
                   status: ended.status };
const again = await chat.end();  // nothing to end
turns.push((await chat.send("three")).output.parameters.turn);
report({ turns, first, second, afterEnd, again, id: chat.sessionId });
"""
    report = await run_client(contract.app, script, "/engine/")

    first, second, third = report["first"], report["second"], report["id"]
    assert len({first, second, third}) == 3
    assert report["turns"] == ["1", "1", "1"]
    assert new_sessions(report) == [
        {"reason": "first", "sessionId": first, "previousSessionId": None},
        {"reason": "expired", "sessionId": second, "previousSessionId": first},
        {"reason": "ended", "sessionId": third, "previousSessionId": second},
    ]
    # end() posts to <endpoint>/endsession with the session, forgets it, and presents the ended id once more.
    assert report["afterEnd"] == {
        "id": None,
        "carried": f"JSESSIONID={second}",
        "body": {"status": 1, "message": "logout"},
        "status": 200,
    }
    assert report["again"] is None
    assert [(e.method, e.path, e.carried) for e in contract.seen] == [
        ("POST", "/engine/", None),
        ("POST", "/engine/", contract.carried(first)),
        ("POST", "/engine/endsession", contract.carried(second)),
        ("POST", "/engine/", f"JSESSIONID={second}"),
    ]


async def test_the_session_survives_a_reload_through_storage(run_client: RunClient) -> None:
    contract = ContractGateway()
    script = """
const storage = memoryStorage();
const tab = client({ storage });
const one = await tab.send("hi");
const reloaded = client({ storage });  // a reload: a new client, the same sessionStorage
const restored = { id: reloaded.sessionId, carried: reloaded.sessionHeader(), persistent: reloaded.persistent };
const two = await reloaded.send("still there?");
const saved = Object.fromEntries(storage.map);
reloaded.forget();
report({ turns: [one, two].map((a) => a.output.parameters.turn), restored, saved, key: reloaded.storageKey,
         afterForget: [...storage.map.keys()], idAfterForget: reloaded.sessionId });
"""
    report = await run_client(contract.app, script, "/engine/")

    (sid,) = contract.turns
    assert report["turns"] == ["1", "2"]
    assert report["restored"] == {"id": sid, "carried": contract.carried(sid), "persistent": True}
    pair = contract.pair(sid)
    assert {key: json.loads(value) for key, value in report["saved"].items()} == {
        report["key"]: {"id": sid, "pair": pair, "ended": None}
    }
    assert report["afterForget"] == []
    assert report["idAfterForget"] is None
    assert len(new_sessions(report)) == 1


async def test_a_bad_session_header_is_forgotten_and_the_next_turn_starts_afresh(
    run_client: RunClient,
) -> None:
    contract = ContractGateway()
    script = """
const storage = memoryStorage();
const chat = client({ storage });
storage.setItem(chat.storageKey, JSON.stringify({ id: "not a cookie value", pair: null, ended: null }));
const stale = client({ storage });
const failed = await outcome(stale.send("hi"));
const afterFailure = { id: stale.sessionId, carried: stale.sessionHeader(), stored: [...storage.map.keys()] };
const answer = await stale.send("hi again");
report({ failed, afterFailure, turn: answer.output.parameters.turn, id: stale.sessionId });
"""
    report = await run_client(contract.app, script, "/engine/")

    error = {"code": "bad_session_header", "message": "X-Teneo-Session is not a cookie string"}
    assert report["failed"] == {
        "error": {
            "name": "SessionClientError",
            "status": 400,
            "body": {"error": error},
            "isClientError": True,
        }
    }
    assert report["afterFailure"] == {"id": None, "carried": None, "stored": []}
    assert report["turn"] == "1"
    assert [e.carried for e in contract.seen] == ["JSESSIONID=not a cookie value", None]
    assert new_sessions(report) == [{"reason": "first", "sessionId": report["id"], "previousSessionId": None}]


async def test_an_id_only_in_the_json_and_configured_names(run_client: RunClient) -> None:
    """A Teneo engine without the gateway names the session in its JSON only; cookieName and headerName follow
    session.cookie and session.header."""
    contract = ContractGateway(cookie="SID", header="X-Chat-Session", id_in_header=False)
    script = """
const chat = client({ cookieName: "SID", headerName: "X-Chat-Session" });
const answers = [await chat.send("hi"), await chat.send("again")];
report({ turns: answers.map((a) => a.output.parameters.turn), id: chat.sessionId });
"""
    report = await run_client(contract.app, script, "/engine/")

    (sid,) = contract.turns
    assert report == {"events": report["events"], "turns": ["1", "2"], "id": sid}
    assert [e.carried for e in contract.seen] == [None, f"SID={sid}; {contract.pair(sid)}"]
    assert new_sessions(report) == [{"reason": "first", "sessionId": sid, "previousSessionId": None}]


async def test_another_origin_never_gets_the_session(run_client: RunClient, aiohttp_server: Any) -> None:
    contract, elsewhere = ContractGateway(), ContractGateway()
    other: TestServer = await aiohttp_server(elsewhere.app)
    script = (
        f"const there = {json.dumps(str(other.make_url('/engine/')))};"
        + """
const chat = client();
await chat.send("hi");
const answer = await chat.fetch(there, { method: "POST", body: new URLSearchParams({ userinput: "psst" }) });
report({ status: answer.status, id: chat.sessionId });
"""
    )
    report = await run_client(contract.app, script, "/engine/")

    (sid,) = contract.turns
    assert report["status"] == 200
    assert report["id"] == sid  # the other origin's session was not taken over
    assert [e.carried for e in elsewhere.seen] == [None]


# --- deferred answers (issue 18): a gateway acting out [deferred] -------------------------------------------

TOKEN = "tok-3QmZf0y9bW8sQkVx1Ayc4w"
PICKUP = f"/_gateway/deferred/{TOKEN}"
SESSION = "5E0C3E8A21B04B6F9A4C2D7E10F3B8C1"
AFFINITY = "GatewayAffinity=r1"
CARRIED = f"JSESSIONID={SESSION}; {AFFINITY}"
MESSAGE = "One moment, I am still working on your answer."


def teneo_interim(token: str = TOKEN) -> dict[str, Any]:
    """deferred.format = "teneo": the engine's shape, the gateway's message, the token in its parameters."""
    return {
        "status": 0,
        "input": {"text": "", "parameters": {}},
        "output": {"text": MESSAGE, "emotion": "", "link": "", "parameters": {"gateway_deferred": token}},
        "sessionId": SESSION,
    }


class DeferringGateway:
    """The gateway's side of the deferred contract: POST answers an interim; each pick-up does the next step.

    Steps: "interim" (still running), "answer" (the bot's answer), "gone" (404 deferred_not_found),
    "bot-404" (the bot's own 404, delivered), "drop" (the connection closes without an answer).
    """

    def __init__(self, steps: list[str], interim_format: str = "teneo") -> None:
        self.steps = steps
        self.format = interim_format
        # (method, path, X-Teneo-Session, time.monotonic()) per request
        self.seen: list[tuple[str, str, str | None, float]] = []
        self.app = web.Application()
        self.app.router.add_post("/", self.message)
        self.app.router.add_get("/_gateway/deferred/{token}", self.pick_up)

    def _record(self, request: web.Request) -> None:
        self.seen.append(
            (request.method, request.path, request.headers.get("X-Teneo-Session"), time.monotonic())
        )

    def interim(self) -> web.Response:
        headers = {
            "X-Session-Deferred": TOKEN,
            "Retry-After": "1",
            "X-Session-Id": SESSION,
            "X-Gateway-Session": f"{AFFINITY}; Path=/",
        }
        if self.format == "json":
            body = {"deferred": {"token": TOKEN, "poll": PICKUP}}
            return web.json_response(body, status=202, headers=headers)
        return web.json_response(teneo_interim(), headers=headers)

    async def message(self, request: web.Request) -> web.Response:
        self._record(request)
        return self.interim()

    async def pick_up(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        step = self.steps.pop(0)
        if request.match_info["token"] != TOKEN or step == "gone":
            error = {"code": "deferred_not_found", "message": "No deferred answer with this token."}
            return web.json_response({"error": error}, status=404)
        if step == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if step == "interim":
            return self.interim()
        if step == "bot-404":
            return web.json_response({"message": "no such thing"}, status=404)
        answer = {**teneo_interim(), "output": {"text": "Thought it over.", "parameters": {"turn": "1"}}}
        headers = {"X-Session-New": "first", "X-Session-Id": SESSION, "X-Gateway-Session": AFFINITY}
        return web.json_response(answer, headers=headers)


SEND = 'const chat = client(%s); report({ result: await outcome(chat.send("think")), id: chat.sessionId });'


@pytest.mark.parametrize("interim_format", ["teneo", "json"])
async def test_send_waits_for_a_deferred_answer(run_client: RunClient, interim_format: str) -> None:
    gateway = DeferringGateway(["interim", "answer"], interim_format)
    report = await run_client(gateway.app, SEND % "")

    assert report["result"]["value"]["output"]["text"] == "Thought it over."
    interim = teneo_interim() if interim_format == "teneo" else {"deferred": {"token": TOKEN, "poll": PICKUP}}
    interims = [event["interim"] for event in report["events"] if "interim" in event]
    assert interims == [interim]  # once, though the first pick-up got the interim again
    # The new-session signal comes with the bot's answer; the session from the interim is carried to the pick-up.
    assert new_sessions(report) == [{"reason": "first", "sessionId": SESSION, "previousSessionId": None}]
    assert report["id"] == SESSION
    assert [(method, path, carried) for method, path, carried, _ in gateway.seen] == [
        ("POST", "/", None),
        ("GET", PICKUP, CARRIED),
        ("GET", PICKUP, CARRIED),
    ]
    # That pick-up answered at once: the next one waited for its Retry-After (1 s).
    assert gateway.seen[2][3] - gateway.seen[1][3] >= 0.9


async def test_interim_mode_returns_the_interim(run_client: RunClient) -> None:
    gateway = DeferringGateway([])
    report = await run_client(gateway.app, SEND % '{ deferred: "interim" }')

    assert report["result"] == {"value": teneo_interim()}
    assert [event["interim"] for event in report["events"] if "interim" in event] == [teneo_interim()]
    assert report["id"] == SESSION
    assert [path for _, path, _, _ in gateway.seen] == ["/"]  # the caller picks up, if it wants to


FETCH = """
const chat = client();
const result = await outcome(chat.fetch("", { method: "POST", body: new URLSearchParams({ userinput: "think" }) })
  .then(async (response) => ({ status: response.status, body: await response.json() })));
report({ result });
"""


async def test_a_gone_answer_rejects_and_a_bots_404_is_the_answer(run_client: RunClient) -> None:
    gone = await run_client(DeferringGateway(["gone"]).app, FETCH)
    code = {"code": "deferred_not_found", "message": "No deferred answer with this token."}
    error = {"name": "SessionClientError", "status": 404, "body": {"error": code}, "isClientError": True}
    assert gone["result"] == {"error": error}

    bot_404 = await run_client(DeferringGateway(["bot-404"]).app, FETCH)
    assert bot_404["result"] == {"value": {"status": 404, "body": {"message": "no such thing"}}}


async def test_network_errors_are_retried_with_backoff(run_client: RunClient) -> None:
    gateway = DeferringGateway(["drop", "drop", "answer"])
    report = await run_client(gateway.app, SEND % "")

    assert report["result"]["value"]["output"]["text"] == "Thought it over."
    times = [at for _, path, _, at in gateway.seen if path == PICKUP]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 2 and 0.2 <= gaps[0] < gaps[1] and 0.45 <= gaps[1] < 1.5  # 0.25 s, then 0.5 s


async def test_network_errors_give_up_after_five_tries(run_client: RunClient) -> None:
    gateway = DeferringGateway(["drop"] * 5)
    report = await run_client(gateway.app, SEND % "")

    assert report["result"]["error"]["name"] == "TypeError"  # fetch's network error, as without deferral
    assert [path for _, path, _, _ in gateway.seen] == ["/"] + [PICKUP] * 5


# --- (b) against the real gateway ---------------------------------------------------------------------------


async def test_send_waits_through_the_real_gateway(run_client: RunClient, aiohttp_server: Any) -> None:
    """The demo bot's "think" behind a gateway with [deferred] on: the cookie-less client gets its answer."""
    bot: TestServer = await aiohttp_server(create_bot_app(slow_seconds=0.6))
    overrides = {"upstream.url": str(bot.make_url("/")), "deferred.after": "0.1", "log.access": "false"}
    config = load_config(None, environ={}, overrides=overrides)
    gateway = GatewayTestServer(create_app(config, registry=CollectorRegistry()))
    await gateway.start_server()
    try:
        script = """
const chat = client();
const first = await chat.send("hi");
const slow = await chat.send("think");
const after = await chat.send("and now");
report({ turns: [first, slow, after].map((answer) => answer.output.parameters.turn), id: chat.sessionId,
         text: slow.output.text });
"""
        report = await run_client(str(gateway.make_url("/")), script)
    finally:
        await gateway.close()

    assert report["turns"] == ["1", "2", "3"]
    assert report["text"] == "I thought about it for 0.6 seconds. Done!"
    (interim,) = [event["interim"] for event in report["events"] if "interim" in event]
    token = interim["deferred"]["token"]
    assert interim == {"deferred": {"token": token, "poll": f"/_gateway/deferred/{token}"}}  # format = "json"
    assert [event["reason"] for event in new_sessions(report)] == ["first"]
    assert report["id"]


async def test_a_conversation_through_a_gateway_process(
    run_client: RunClient, published: Published, aiohttp_server: Any, spawn_gateway: SpawnGateway
) -> None:
    """`python -m gateway serve` in front of the demo bot: the client carries the session with no cookie jar
    through idle expiry and an end, and the gateway serves the very file npm publishes."""
    bot: TestServer = await aiohttp_server(create_bot_app())
    gateway = await spawn_gateway(
        upstream_url=str(bot.make_url("/")), GATEWAY_SESSION_IDLE_TIMEOUT="1", GATEWAY_LOG_ACCESS="false"
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.url + "/_gateway/session-client.js") as got,
    ):
        assert got.status == 200
        assert await got.read() == (published.installed / "session-client.js").read_bytes()

    script = """
const chat = client({ storage: memoryStorage() });
const turns = [];
const say = async (text) => turns.push((await chat.send(text)).output.parameters.turn);
await say("hi");
await say("again");
const carried = chat.sessionHeader();
await new Promise((resolve) => setTimeout(resolve, 1800));  // past session.idle_timeout
await say("still there?");
const ended = await chat.end();
const afterEnd = { status: ended.status, body: await ended.json(), carried: chat.sessionHeader(),
                   pair: ended.headers.get("X-Gateway-Session") };
await say("back");
report({ turns, carried, afterEnd, id: chat.sessionId });
"""
    report = await run_client(gateway.url, script, "/engine/")

    first, expired, ended = new_sessions(report)
    assert report["turns"] == ["1", "2", "1", "1"]
    assert (first["reason"], first["previousSessionId"]) == ("first", None)
    assert (expired["reason"], expired["previousSessionId"]) == ("expired", first["sessionId"])
    assert (ended["reason"], ended["previousSessionId"]) == ("ended", expired["sessionId"])
    assert ended["sessionId"] == report["id"]
    assert len({first["sessionId"], expired["sessionId"], ended["sessionId"]}) == 3
    assert re.fullmatch(rf"JSESSIONID={first['sessionId']}; GatewayAffinity=\S+", report["carried"])
    assert report["afterEnd"] == {
        "status": 200,
        "body": {"status": 1, "message": "logout"},
        "carried": f"JSESSIONID={expired['sessionId']}",
        "pair": "",
    }
