"""The official Teneo JavaScript SDK across a graceful gateway restart (issue 17, "real backends").

The SDK (`@artificialsolutions/tie-api-client`, pinned in tests/sdk) POSTs a form (`viewtype=tieapi`,
`userinput=<text>`) to `<engine>/;jsessionid=<id>` with a `Cookie: JSESSIONID=<id>` header, which browsers
drop (a forbidden request header); it reads the id from the answer's JSON `sessionId`, never looks at a
response header, so it never echoes `X-Gateway-Session`, and ends with `POST <engine>/endsession;jsessionid=<id>`.
So the path parameter alone carries the session and the gateway alone knows its bot replica. With the memory
store and `session.state_file`, a graceful restart keeps that: the conversation goes on on its replica.

Two clients behave so: the real SDK driven with Node (tests/sdk/drive.js; skips without Node or the SDK, fails
under CI=true), and the same requests made from Python, which never skips.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import pytest
import yarl
from aiohttp import web
from conftest_tools import REPO, executable, unavailable
from gateway_helpers import free_port
from multidict import CIMultiDict
from replica_helpers import BotReplica, MeteredGatewayProcess, stop_gateways
from session_helpers import SeenByBot, demo_bot_app

pytestmark = pytest.mark.slow

SDK_DIR = REPO / "tests" / "sdk"
DRIVER = SDK_DIR / "drive.js"
SDK_PACKAGE = SDK_DIR / "node_modules" / "@artificialsolutions" / "tie-api-client"
ENGINE_PATH = "/engine"  # the SDK appends "/" and "endsession" to the engine URL it is given
ANSWER_TIMEOUT = 10.0  # seconds for one exchange, so a wedged driver fails the test instead of hanging it
# What the SDK sends besides the session (src/utils/http.js, src/tie-api-client.js).
SDK_HEADERS = {
    "Accept": "application/json;charset=UTF-8",
    "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
}
# Session carriers that the SDK in a browser never sends: its Cookie header is dropped, and it has no other.
SESSION_HEADERS = ("Cookie", "X-Teneo-Session", "X-Gateway-Session")


@dataclass(slots=True)
class SdkAnswer:
    """One exchange as the client saw it: the response, the JSON the SDK handed over, what was sent."""

    status: int
    headers: CIMultiDict[str]
    body: Any
    sent_url: str
    sent_headers: CIMultiDict[str]
    session_id: str | None  # the id the client tracks after this exchange

    @property
    def new(self) -> str | None:
        return self.headers.get("X-Session-New")

    @property
    def replica(self) -> str:
        return str(self.body["output"]["parameters"]["replica"])

    @property
    def turn(self) -> int:
        return int(self.body["output"]["parameters"]["turn"])


class SdkClient(Protocol):
    """One chat conversation as the SDK keeps it: the engine URL and the last session id it was given."""

    async def send(self, text: str) -> SdkAnswer: ...

    async def close(self) -> SdkAnswer: ...

    async def aclose(self) -> None: ...


class PythonSdkClient:
    """The SDK's requests made from Python, as a browser sends them: no cookies, no session header."""

    def __init__(self, engine: str) -> None:
        self.engine = engine if engine.endswith("/") else engine + "/"  # the SDK's formatEngineUrl
        self.session_id: str | None = None
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    def _url(self, path: str) -> str:
        return f"{self.engine}{path}" + (f";jsessionid={self.session_id}" if self.session_id else "")

    async def _post(self, url: str, fields: dict[str, str]) -> SdkAnswer:
        async with self._http.post(
            yarl.URL(url, encoded=True), data=urlencode(fields), headers=SDK_HEADERS
        ) as response:
            body = await response.json(content_type=None)
            sent = CIMultiDict(response.request_info.headers)
            return SdkAnswer(response.status, CIMultiDict(response.headers), body, url, sent, self.session_id)

    async def send(self, text: str) -> SdkAnswer:
        answer = await self._post(self._url(""), {"viewtype": "tieapi", "userinput": text})
        self.session_id = answer.body.get("sessionId") or self.session_id
        return dataclasses.replace(answer, session_id=self.session_id)

    async def close(self) -> SdkAnswer:
        return await self._post(self._url("endsession"), {"viewtype": "tieapi"})

    async def aclose(self) -> None:
        await self._http.close()


class NodeSdkClient:
    """The real SDK in a Node process (tests/sdk/drive.js), one per conversation, fed JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, node: str, engine: str) -> NodeSdkClient:
        proc = await asyncio.create_subprocess_exec(
            node,
            str(DRIVER),
            engine,
            cwd=SDK_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _command(self, **command: str) -> SdkAnswer:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self._proc.stdin.drain()
        line = await asyncio.wait_for(self._proc.stdout.readline(), ANSWER_TIMEOUT)
        if not line:
            pytest.fail(f"drive.js exited with {await self._proc.wait()}: {await self._stderr()}")
        answer = json.loads(line)
        if not answer["ok"]:
            pytest.fail(f"the SDK failed on {command}: {answer['error']}")
        received, sent = answer["received"], answer["sent"]
        # sendInput resolves with the engine's JSON; close resolves with nothing, so read what it received.
        body = answer["result"] if answer["result"] is not None else json.loads(received["body"])
        return SdkAnswer(
            received["status"],
            CIMultiDict(received["headers"]),
            body,
            sent["url"],
            CIMultiDict(sent["headers"]),
            answer["sessionId"],
        )

    async def _stderr(self) -> str:
        assert self._proc.stderr is not None
        return (await self._proc.stderr.read()).decode(errors="replace")

    async def send(self, text: str) -> SdkAnswer:
        return await self._command(op="send", text=text)

    async def close(self) -> SdkAnswer:
        return await self._command(op="close")

    async def aclose(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 5)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


ConnectSdk = Callable[[str], Awaitable[SdkClient]]


@pytest.fixture(params=["python", "node"], ids=["python-client", "node-sdk"])
async def connect_sdk(request: pytest.FixtureRequest) -> AsyncIterator[ConnectSdk]:
    """connect_sdk(engine_url) -> a new conversation's client; every client is closed at teardown."""
    clients: list[SdkClient] = []
    node = ""
    if request.param == "node":
        node = executable("node", "install Node.js (Debian: nodejs) or run scripts/_node_setup.sh as root")
        if not SDK_PACKAGE.is_dir():
            unavailable(
                "the Teneo JavaScript SDK (tests/sdk/node_modules)", "run `bash scripts/_node_setup.sh`"
            )

    async def open_client(engine: str) -> SdkClient:
        client: SdkClient = await NodeSdkClient.start(node, engine) if node else PythonSdkClient(engine)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.aclose()


def replica_bot(name: str, seen: list[SeenByBot]) -> web.Application:
    """The demo bot, recording what it sees, naming itself in `output.parameters.replica` of every answer."""
    app = demo_bot_app(time.monotonic, seen)

    @web.middleware
    async def naming(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if isinstance(response, web.Response) and response.text and "output" in response.text:
            body = json.loads(response.text)
            body["output"]["parameters"]["replica"] = name
            response.text = json.dumps(body)
        return response

    app.middlewares.append(naming)
    return app


@pytest.fixture
async def bots(aiohttp_server: Any) -> list[BotReplica]:
    """Two demo bot replicas, a and b, each keeping its conversations in memory as Teneo engines do."""
    replicas = []
    for name in ("a", "b"):
        seen: list[SeenByBot] = []
        replicas.append(BotReplica(name, await aiohttp_server(replica_bot(name, seen)), seen))
    return replicas


async def _start_gateway(tmp_path: Path, name: str, env: dict[str, str], port: int) -> MeteredGatewayProcess:
    """`python -m gateway serve` on `port`: the restarted process listens where its predecessor did."""
    launched = MeteredGatewayProcess.launch(
        tmp_path / f"{name}.stderr", {**env, "GATEWAY_LISTEN_PORT": str(port)}, cwd=REPO
    )
    gateway = dataclasses.replace(launched, port=port)
    await gateway.started()
    return gateway


def _carried_by_path_alone(answer: SdkAnswer, sid: str, path: str = "") -> None:
    assert answer.sent_url.endswith(f"{ENGINE_PATH}/{path};jsessionid={sid}"), answer.sent_url
    assert not [h for h in SESSION_HEADERS if h in answer.sent_headers], answer.sent_headers


def _asked_for(bot: BotReplica, sid: str) -> list[SeenByBot]:
    return [s for s in bot.seen if ("JSESSIONID", sid) in s.cookies]


async def test_an_sdk_conversation_continues_on_its_replica_across_a_graceful_restart(
    connect_sdk: ConnectSdk, bots: list[BotReplica], tmp_path: Path
) -> None:
    a, b = bots
    state = tmp_path / "state"
    env = {
        "GATEWAY_UPSTREAM_URLS": ",".join(bot.spec for bot in bots),
        "GATEWAY_SESSION_STORE": "memory",
        "GATEWAY_SESSION_SECRET": "sdk-test-secret",
        "GATEWAY_SESSION_STATE_FILE": str(state),
        "GATEWAY_LISTEN_SHUTDOWN_TIMEOUT": "5",
        "GATEWAY_LOG_ACCESS": "false",
    }
    port = free_port()
    before = await _start_gateway(tmp_path, "before", env, port)
    gateways = [before]
    try:
        engine = before.url + ENGINE_PATH
        # New sessions spread over the replicas: start conversations until one is pinned to b.
        for _ in range(4):
            client = await connect_sdk(engine)
            hello = await client.send("hello")
            assert (hello.status, hello.new, hello.turn) == (200, "first", 1), hello
            if hello.replica == "b":
                break
        else:
            pytest.fail("four new conversations and none went to replica b")
        sid = hello.session_id
        assert sid and hello.headers["X-Session-Id"] == sid

        second = await client.send("still there?")
        assert (second.status, second.new, second.session_id, second.replica, second.turn) == (
            200, None, sid, "b", 2,
        )  # fmt: skip
        _carried_by_path_alone(second, sid)

        before.terminate()  # SIGTERM: graceful
        assert await before.exit_code(timeout=10) == 0, before.stderr()
        assert state.exists(), "the memory store wrote no session.state_file on SIGTERM"
        after = await _start_gateway(tmp_path, "after", env, port)
        gateways.append(after)

        third = await client.send("and after the restart?")
        assert (third.status, third.new, third.session_id, third.replica, third.turn) == (
            200, None, sid, "b", 3,
        )  # fmt: skip
        _carried_by_path_alone(third, sid)
        assert not _asked_for(a, sid)
        assert "X-Session-New" not in _asked_for(b, sid)[-1].headers

        bye = await client.close()
        assert (bye.status, bye.body) == (200, {"status": 1, "message": "logout"})
        _carried_by_path_alone(bye, sid, "endsession")
        assert _asked_for(b, sid)[-1].raw_path == f"{ENGINE_PATH}/endsession"  # the bot's end dialog ran

        again = await client.send("anyone?")
        assert (again.status, again.new, again.turn) == (200, "ended", 1), again
        assert again.session_id not in (None, sid)
        _carried_by_path_alone(again, sid)  # the ended id, as the SDK keeps it until an answer replaces it

        async with aiohttp.ClientSession() as http:
            # The restarted gateway knew the session from its state file: nothing was adopted, and the
            # path parameter was the only carrier it saw.
            assert await after.metric(http, "sessions_started_total", reason="adopted") == 0
            assert await after.metric(http, "sessions_started_total", reason="ended") == 1
            assert await after.metric(http, "session_carrier_total", carrier="path") >= 3
            for carrier in ("cookie", "header"):
                assert await after.metric(http, "session_carrier_total", carrier=carrier) == 0
    finally:
        stop_gateways(gateways)
    for gateway in gateways:
        assert gateway.proc.returncode == 0, gateway.stderr()
        assert "Traceback" not in gateway.stderr()
