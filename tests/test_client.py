"""The JS session client: served at client.path with the right headers, configurable, shipped identical."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest_tools import executable
from prometheus_client import CollectorRegistry
from served import GatewayTestServer

from gateway.app import create_app
from gateway.client import client_script
from gateway.config import ClientConfig, load_config
from gateway.demo import create_bot_app
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PATH = "/_gateway/session-client.js"

Gateway = Callable[..., Awaitable[tuple[TestClient[Any, Any], list[str]]]]


@pytest.fixture
def gateway(aiohttp_server: Any, aiohttp_client: Any) -> Gateway:
    """A gateway in front of a bot that records the paths it is asked for."""

    async def make(**overrides: str) -> tuple[TestClient[Any, Any], list[str]]:
        seen: list[str] = []

        async def bot(request: web.Request) -> web.Response:
            seen.append(request.path)
            return web.json_response({"status": 0})

        upstream = web.Application()
        upstream.router.add_route("*", "/{tail:.*}", bot)
        server: TestServer = await aiohttp_server(upstream)
        config = load_config(
            None, environ={}, overrides={"upstream.url": str(server.make_url("/")), **overrides}
        )
        client = await aiohttp_client(GatewayTestServer(create_app(config, registry=CollectorRegistry())))
        return client, seen

    return make


async def test_served_with_type_caching_and_no_bot(gateway: Gateway) -> None:
    client, seen = await gateway()
    response = await client.get(PATH)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["ETag"])
    assert await response.read() == client_script()
    assert "X-Gateway-Session" not in response.headers  # answered by the gateway, no session involved
    assert seen == []


async def test_etag_revalidation_and_head(gateway: Gateway) -> None:
    client, _ = await gateway(**{"client.max_age": "60"})
    etag = (await client.get(PATH)).headers["ETag"]
    revalidated = await client.get(PATH, headers={"If-None-Match": f'"other", {etag}'})
    assert revalidated.status == 304
    assert revalidated.headers["ETag"] == etag
    assert revalidated.headers["Cache-Control"] == "public, max-age=60"
    assert await revalidated.read() == b""
    changed = await client.get(PATH, headers={"If-None-Match": '"other"'})
    assert changed.status == 200
    head = await client.head(PATH)
    assert head.status == 200
    assert head.headers["Content-Type"] == "text/javascript; charset=utf-8"


async def test_disabled_leaves_the_path_to_the_bot(gateway: Gateway) -> None:
    client, seen = await gateway(**{"client.enabled": "false"})
    response = await client.get(PATH)
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert seen == [PATH]


async def test_configured_path(gateway: Gateway) -> None:
    client, seen = await gateway(**{"client.path": "/widget/client.js"})
    assert (await client.get("/widget/client.js")).headers["Content-Type"].startswith("text/javascript")
    await client.get(PATH)
    assert seen == [PATH]


async def test_other_methods_are_proxied(gateway: Gateway) -> None:
    client, seen = await gateway()
    await client.post(PATH, data=b"x")
    assert seen == [PATH]


@pytest.mark.parametrize(
    ("origin", "allow_origin", "credentials"),
    [("https://shop.example", "https://shop.example", "true"), ("https://evil.example", None, None)],
    ids=["allowed-origin", "other-origin"],
)
async def test_cors_hook_decides_when_configured(
    gateway: Gateway, origin: str, allow_origin: str | None, credentials: str | None
) -> None:
    client, _ = await gateway(**{"cors.allow_origins": "https://shop.example"})
    response = await client.get(PATH, headers={"Origin": origin})
    assert response.status == 200
    assert response.headers.get("Access-Control-Allow-Origin") == allow_origin
    assert response.headers.get("Access-Control-Allow-Credentials") == credentials
    assert "Origin" in response.headers["Vary"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("path", "session-client.js", "expected a path"),
        ("path", "/", "expected a path"),
        ("path", "/a/{name}.js", "expected a path"),
        ("path", "/a.js?v=1", "expected a path"),
        ("max_age", -1, "expected seconds >= 0, got -1"),
    ],
    ids=["relative", "root", "pattern", "query", "negative-max-age"],
)
def test_config_validation(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        ClientConfig(**{key: value})
    assert info.value.key == f"client.{key}"


def test_example_config_documents_the_defaults() -> None:
    assert load_config(ROOT / "config.example.toml", environ={}).client == ClientConfig()


def test_shipped_copy_is_identical() -> None:
    """clients/js/ is the copy widget developers take; the package ships (and serves) the same bytes."""
    assert (ROOT / "clients" / "js" / "session-client.js").read_bytes() == client_script()


def test_types_declare_every_export() -> None:
    exported = set(re.findall(r"^export class (\w+)", client_script().decode(), re.MULTILINE))
    declared = (ROOT / "clients" / "js" / "session-client.d.ts").read_text()
    assert exported == {"SessionClient", "SessionClientError"}
    for name in exported:
        assert f"export class {name}" in declared


# --- deferred answers (issue 18), the client running in Node against a gateway speaking the contract ------------

TOKEN = "tok-3QmZf0y9bW8sQkVx1Ayc4w"
PICKUP = f"/_gateway/deferred/{TOKEN}"
SESSION = "5E0C3E8A21B04B6F9A4C2D7E10F3B8C1"
AFFINITY = "GatewayAffinity=r1"
CARRIED = f"JSESSIONID={SESSION}; {AFFINITY}"
MESSAGE = "One moment, I am still working on your answer."
PRELUDE = """
import { SessionClient } from %(module)s;
const started = Date.now();
const events = [];
const client = (options = {}) => new SessionClient({
  endpoint: %(endpoint)s,
  storage: null,
  onInterim: (answer) => events.push({ interim: answer, at: Date.now() - started }),
  onNewSession: (event) => events.push({ newSession: event }),
  ...options,
});
async function outcome(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    return { error: { name: error.name, status: error.status ?? null, body: error.body ?? null } };
  }
}
const report = (fields) => console.log(JSON.stringify({ events, ...fields }));
"""


def teneo_interim(token: str = TOKEN) -> dict[str, Any]:
    """deferred.format = "teneo": the engine's shape, the gateway's message, the token in its parameters."""
    return {
        "status": 0,
        "input": {"text": "", "parameters": {}},
        "output": {"text": MESSAGE, "emotion": "", "link": "", "parameters": {"gateway_deferred": token}},
        "sessionId": SESSION,
    }


class FakeGateway:
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


RunClient = Callable[[FakeGateway | str, str], Awaitable[dict[str, Any]]]


@pytest.fixture
def run_client(aiohttp_server: Any) -> RunClient:
    """run(gateway, script) -> what the script reported: the client in Node, against a FakeGateway on loopback
    or a gateway's URL."""
    node = executable("node", "install Node.js (Debian: nodejs; scripts/_node_setup.sh does, as root)")

    async def run(gateway: FakeGateway | str, script: str) -> dict[str, Any]:
        if isinstance(gateway, FakeGateway):
            gateway = str((await aiohttp_server(gateway.app)).make_url("/"))
        module = (ROOT / "clients" / "js" / "session-client.js").as_uri()
        prelude = PRELUDE % {"module": json.dumps(module), "endpoint": json.dumps(gateway)}
        proc = await asyncio.create_subprocess_exec(
            node,
            "--input-type=module",
            "-e",
            prelude + script,
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


SEND = 'const chat = client(%s); report({ result: await outcome(chat.send("think")), id: chat.sessionId });'


@pytest.mark.slow
@pytest.mark.parametrize("interim_format", ["teneo", "json"])
async def test_send_waits_for_a_deferred_answer(run_client: RunClient, interim_format: str) -> None:
    gateway = FakeGateway(["interim", "answer"], interim_format)
    report = await run_client(gateway, SEND % "")

    assert report["result"]["value"]["output"]["text"] == "Thought it over."
    interim = teneo_interim() if interim_format == "teneo" else {"deferred": {"token": TOKEN, "poll": PICKUP}}
    interims = [event["interim"] for event in report["events"] if "interim" in event]
    assert interims == [interim]  # once, though the first pick-up got the interim again
    # The new-session signal comes with the bot's answer; the session from the interim is carried to the pick-up.
    new = [event["newSession"] for event in report["events"] if "newSession" in event]
    assert new == [{"reason": "first", "sessionId": SESSION, "previousSessionId": None}]
    assert report["id"] == SESSION
    assert [(method, path, carried) for method, path, carried, _ in gateway.seen] == [
        ("POST", "/", None),
        ("GET", PICKUP, CARRIED),
        ("GET", PICKUP, CARRIED),
    ]
    # That pick-up answered at once: the next one waited for its Retry-After (1 s).
    assert gateway.seen[2][3] - gateway.seen[1][3] >= 0.9


@pytest.mark.slow
async def test_interim_mode_returns_the_interim(run_client: RunClient) -> None:
    gateway = FakeGateway([])
    report = await run_client(gateway, SEND % '{ deferred: "interim" }')

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


@pytest.mark.slow
async def test_a_gone_answer_rejects_and_a_bots_404_is_the_answer(run_client: RunClient) -> None:
    gone = await run_client(FakeGateway(["gone"]), FETCH)
    code = {"code": "deferred_not_found", "message": "No deferred answer with this token."}
    assert gone["result"] == {"error": {"name": "SessionClientError", "status": 404, "body": {"error": code}}}

    bot_404 = await run_client(FakeGateway(["bot-404"]), FETCH)
    assert bot_404["result"] == {"value": {"status": 404, "body": {"message": "no such thing"}}}


@pytest.mark.slow
async def test_network_errors_are_retried_with_backoff(run_client: RunClient) -> None:
    gateway = FakeGateway(["drop", "drop", "answer"])
    report = await run_client(gateway, SEND % "")

    assert report["result"]["value"]["output"]["text"] == "Thought it over."
    times = [at for _, path, _, at in gateway.seen if path == PICKUP]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 2 and 0.2 <= gaps[0] < gaps[1] and 0.45 <= gaps[1] < 1.5  # 0.25 s, then 0.5 s


@pytest.mark.slow
async def test_network_errors_give_up_after_five_tries(run_client: RunClient) -> None:
    gateway = FakeGateway(["drop"] * 5)
    report = await run_client(gateway, SEND % "")

    assert report["result"]["error"]["name"] == "TypeError"  # fetch's network error, as without deferral
    assert [path for _, path, _, _ in gateway.seen] == ["/"] + [PICKUP] * 5


@pytest.mark.slow
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
    assert [event["newSession"]["reason"] for event in report["events"] if "newSession" in event] == ["first"]
    assert report["id"]
