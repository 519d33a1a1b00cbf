"""The demo's pages: the chat widget the gateway serves under /_gateway/demo/, the host site embedding it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from served import GatewayTestServer

from gateway.app import create_app
from gateway.config import load_config
from gateway.demo import DEMO_PATH, add_demo_widget, create_host_app, widget_url_for


async def widget_client(aiohttp_client: Any, **overrides: str) -> Any:
    config = load_config(None, environ={}, overrides={"upstream.url": "http://127.0.0.1:9", **overrides})
    app = create_app(config, registry=CollectorRegistry())
    add_demo_widget(app, config)
    return await aiohttp_client(GatewayTestServer(app))


@pytest.mark.parametrize(
    ("overrides", "client_url"),
    [({}, "/_gateway/session-client.js"), ({"client.enabled": "false"}, "/_gateway/demo/session-client.js")],
    ids=["served-client", "client-disabled"],
)
async def test_widget_imports_the_served_client(
    aiohttp_client: Any, overrides: dict[str, str], client_url: str
) -> None:
    client = await widget_client(aiohttp_client, **overrides)
    page = await client.get(DEMO_PATH)
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    text = await page.text()
    assert f'{{"imports": {{"session-client": "{client_url}"}}}}' in text
    assert '<label for="message"' in text
    script = await client.get(client_url)
    assert script.status == 200
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("widget.js", "text/javascript; charset=utf-8"), ("widget.css", "text/css; charset=utf-8")],
)
async def test_widget_assets(aiohttp_client: Any, name: str, content_type: str) -> None:
    client = await widget_client(aiohttp_client)
    response = await client.get(DEMO_PATH + name)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Cache-Control"] == "no-cache"


async def test_unknown_demo_file_is_404(aiohttp_client: Any) -> None:
    client = await widget_client(aiohttp_client)
    assert (await client.get(DEMO_PATH + "nope.js")).status == 404
    assert (await client.get(DEMO_PATH + "../app.py")).status in (404, 502)  # never a file outside the demo


async def test_host_page_embeds_the_widget_from_another_site(aiohttp_client: Any) -> None:
    widget = widget_url_for("http://0.0.0.0:8080")
    assert widget == "http://localhost:8080/_gateway/demo/"
    client = await aiohttp_client(create_host_app(widget))
    text = await (await client.get("/?endOnPageHide=1")).text()
    frames = re.findall(r'<iframe id="([\w-]+)" title="([^"]+)" src="([^"]+)"', text)
    assert frames == [
        ("chat-client", "Chat with the demo bot (session client)", f"{widget}?endOnPageHide=1"),
        ("chat-cookies", "Chat with the demo bot (cookies only)", f"{widget}?mode=cookies"),
    ]
    assert "<code>http://localhost:8080</code>" in text


@pytest.mark.parametrize(
    ("gateway", "widget"),
    [
        ("http://127.0.0.1:18080", "http://localhost:18080/_gateway/demo/"),
        ("http://[::]:8080", "http://localhost:8080/_gateway/demo/"),
        ("http://chat.example:8080", "http://chat.example:8080/_gateway/demo/"),
    ],
    ids=["loopback", "unspecified-v6", "name"],
)
def test_widget_url_is_on_localhost_for_local_gateways(gateway: str, widget: str) -> None:
    assert widget_url_for(gateway) == widget
