"""The JS session client: served at client.path with the right headers, configurable, one source with its types.

The client itself, run in Node as npm publishes it, is tested in tests/edge/test_client_node.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest_tools import REPO
from prometheus_client import CollectorRegistry
from served import GatewayTestServer

from gateway.app import create_app
from gateway.config import ClientConfig, load_config
from gateway.edge.client import client_script
from gateway.errors import ConfigError

ROOT = REPO
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


STATIC = ROOT / "gateway" / "static"


def test_one_source() -> None:
    """gateway/static/session-client.js is the only copy in the repository: the gateway serves it, the wheel ships
    it, and clients/js/ publishes it to npm by copying it at pack time (tests/edge/test_client_node.py checks the
    tarball). A second copy, even an edited one, fails here."""
    source = STATIC / "session-client.js"
    assert source.read_bytes() == client_script()
    assert not (source.is_symlink() or (STATIC / "session-client.d.ts").is_symlink())
    marks = (source.read_text().splitlines()[0], 'STORAGE_PREFIX = "session-gateway:"')
    copies = []
    for path in _repository_files():
        if path.suffix not in (".js", ".mjs", ".cjs", ".ts") or path == source:
            continue
        data = path.read_bytes()
        if data == client_script() or any(mark in data.decode(errors="replace") for mark in marks):
            copies.append(path.relative_to(ROOT))
    assert copies == []


def _repository_files() -> list[Path]:
    """The files git tracks or would add (not the ignored ones: node_modules, npm's copies while packing)."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        listed = subprocess.run(
            [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        return [
            ROOT / name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()
        ]
    skip = {".git", ".venv", "node_modules", "test-artifacts"}
    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file() and not skip.intersection(path.relative_to(ROOT).parts[:-1])
    ]


def _members(text: str, class_name: str, member: str) -> set[str]:
    body = text[text.index(f"export class {class_name} ") :]
    end = re.search(r"^}", body, re.MULTILINE)
    assert end is not None
    return {
        name for name in re.findall(member, body[: end.start()], re.MULTILINE) if not name.startswith("_")
    }


def test_types_declare_every_export() -> None:
    """session-client.d.ts, next to the source, declares each exported class with exactly its public members."""
    script = client_script().decode()
    exported = set(re.findall(r"^export class (\w+)", script, re.MULTILINE))
    declared = (STATIC / "session-client.d.ts").read_text()
    assert exported == {"SessionClient", "SessionClientError"}
    for name in exported:
        assert f"export class {name}" in declared
        implemented = _members(script, name, r"^  (?:async |get )?(\w+)\(") | _members(
            script, name, r"this\.(\w+) = "
        )
        typed = _members(declared, name, r"^  (?:readonly )?(\w+)[<(:]")
        assert typed == implemented, name
