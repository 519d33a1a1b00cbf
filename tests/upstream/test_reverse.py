"""Reverse rewriting for a bot behind a path prefix: its cookie paths and redirects, mapped back."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gateway_helpers import LOOPBACK
from session_helpers import make_session_config, start_rig

from gateway.config import UpstreamConfig
from gateway.errors import ConfigError
from gateway.upstream.reverse import PathMap


@pytest.mark.parametrize(
    ("set_cookie", "expected"),
    [
        ("JSESSIONID=A1; Path=/bot; HttpOnly", "JSESSIONID=A1; Path=/; HttpOnly"),
        ("JSESSIONID=A1; Path=/bot/; HttpOnly", "JSESSIONID=A1; Path=/; HttpOnly"),
        ("a=b; path=/bot/engine", "a=b; Path=/engine"),
        ("a=b; Path=/botany", "a=b; Path=/botany"),  # not under /bot: a segment boundary, not a prefix
        ("a=b; Path=/other", "a=b; Path=/other"),
        ("a=b", "a=b"),  # no Path: the browser derives it from the public URL it called
        ("a=b; Domain=bot; Path=/bot", "a=b; Domain=bot; Path=/"),
    ],
)
def test_cookie_paths_under_the_bots_prefix_move_to_the_public_root(set_cookie: str, expected: str) -> None:
    assert PathMap("http://bot:8080/bot", "").cookie(set_cookie) == expected


def test_cookie_paths_move_under_a_public_prefix() -> None:
    path_map = PathMap("http://bot:8080/bot", "/chat")
    assert path_map.cookie("a=b; Path=/bot") == "a=b; Path=/chat"
    assert path_map.cookie("a=b; Path=/bot/engine") == "a=b; Path=/chat/engine"
    root = PathMap("http://bot:8080", "/chat")
    assert root.cookie("a=b; Path=/") == "a=b; Path=/chat"
    assert not PathMap("http://bot:8080", "").rewrites_cookies  # the same paths: nothing to do


@pytest.mark.parametrize(
    ("location", "strip", "expected"),
    [
        ("http://bot:8080/bot/engine?after=1", "jsessionid", "/engine?after=1"),
        ("http://bot:8080/bot/engine;jsessionid=AB12?after=1", "jsessionid", "/engine?after=1"),
        ("http://bot:8080/bot/engine;jsessionid=AB12?after=1", "", "/engine;jsessionid=AB12?after=1"),
        ("HTTP://BOT:8080/bot/x#top", "jsessionid", "/x#top"),
        ("http://bot:8080/bot", "jsessionid", "/"),
        ("/bot/engine", "jsessionid", "/engine"),
        ("/elsewhere", "jsessionid", "/elsewhere"),
        ("engine?x=1", "jsessionid", "engine?x=1"),  # relative: already right for the client
        ("https://example.com/bot/x", "jsessionid", "https://example.com/bot/x"),
        ("http://bot:9999/bot/x", "jsessionid", "http://bot:9999/bot/x"),  # another port: another server
        ("http://bot:8080/botany", "jsessionid", "http://bot:8080/botany"),
        ("//bot:8080/bot/x", "jsessionid", "//bot:8080/bot/x"),
        ("http://[bad", "jsessionid", "http://[bad"),  # unparsable: passed on, never a 500
        # Never a redirect to another site made out of one to the bot: left as the bot sent it.
        ("http://bot:8080/bot//evil.example/", "jsessionid", "http://bot:8080/bot//evil.example/"),
        ("/bot//evil.example/", "jsessionid", "/bot//evil.example/"),
        ("/bot/\\evil.example", "jsessionid", "/bot/\\evil.example"),
        ("/bot;jsessionid=X/evil.example", "jsessionid", "/bot;jsessionid=X/evil.example"),
    ],
)
def test_locations_into_the_bots_url_become_public_paths(location: str, strip: str, expected: str) -> None:
    assert PathMap("http://bot:8080/bot", "").location(location, strip) == expected


def test_default_ports_match_and_a_public_prefix_is_put_first() -> None:
    path_map = PathMap("http://bot/bot", "/chat")
    assert path_map.location("http://bot:80/bot/engine", "") == "/chat/engine"
    assert path_map.location("http://bot/bot/", "") == "/chat/"
    assert PathMap("https://bot", "").location("https://bot:443/x?y", "") == "/x?y"


@pytest.mark.parametrize("prefix", ["chat", "/chat/", "/a//b"])
def test_a_malformed_public_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"upstream\.public_prefix"):
        UpstreamConfig(public_prefix=prefix)


class PrefixedBot:
    """A servlet-style bot under /bot: a cookie scoped to its context path, redirects made absolute, and a
    `;jsessionid=` in them (what Tomcat's encodeRedirectURL adds when it cannot tell cookies work)."""

    def __init__(self) -> None:
        self.turns: dict[str, int] = {}
        self.origin = ""

    async def handle(self, request: web.Request) -> web.Response:
        session_id = request.cookies.get("JSESSIONID")
        headers = {}
        if session_id not in self.turns:
            session_id = secrets.token_hex(8).upper()
            self.turns[session_id] = 0
            headers["Set-Cookie"] = f"JSESSIONID={session_id}; Path=/bot; HttpOnly"
        assert session_id is not None
        if request.query.get("redirect"):
            location = f"{self.origin}/bot/engine;jsessionid={session_id}?after=1"
            raise web.HTTPFound(location, headers=headers)
        self.turns[session_id] += 1
        return web.json_response({"turn": self.turns[session_id]}, headers=headers)


@pytest.fixture
async def prefixed_bot(aiohttp_server: Any) -> PrefixedBot:
    bot = PrefixedBot()
    app = web.Application()
    app.router.add_route("*", "/bot/{tail:.*}", bot.handle)
    server = await aiohttp_server(app)
    bot.origin = f"http://{LOOPBACK}:{server.port}"
    return bot


async def _rig(aiohttp_client: Any, clock: Any, url: str, **upstream: Any) -> Any:
    env = {
        f"GATEWAY_UPSTREAM_{k.upper()}": str(v).lower() if isinstance(v, bool) else v
        for k, v in upstream.items()
    }
    return await start_rig(aiohttp_client, make_session_config(url, environ=env), clock)


async def test_a_cookie_keeping_browser_continues_behind_a_path_prefix(
    prefixed_bot: PrefixedBot, aiohttp_client: Any, clock: Any
) -> None:
    rig = await _rig(aiohttp_client, clock, prefixed_bot.origin + "/bot")
    jar = aiohttp.CookieJar(unsafe=True)  # keeps cookies for an IP host, as a browser does for its site
    async with aiohttp.ClientSession(str(rig.client.make_url("/")), cookie_jar=jar) as browser:
        turns = []
        for _ in range(3):
            async with browser.get("/engine?userinput=hi") as response:
                turns.append((await response.json())["turn"])
                cookies = response.headers.getall("Set-Cookie", [])
                if len(turns) == 1:
                    own = next(c for c in cookies if c.startswith("JSESSIONID="))
                    assert "Path=/;" in own or own.endswith("Path=/")
    assert turns == [1, 2, 3]


async def test_without_rewriting_the_same_browser_starts_over_every_turn(
    prefixed_bot: PrefixedBot, aiohttp_client: Any, clock: Any
) -> None:
    """The failure the rewriting fixes, shown with it off."""
    rig = await _rig(aiohttp_client, clock, prefixed_bot.origin + "/bot", rewrite_paths=False)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(str(rig.client.make_url("/")), cookie_jar=jar) as browser:
        turns = []
        for _ in range(2):
            async with browser.get("/engine") as response:
                turns.append((await response.json())["turn"])
    assert turns == [1, 1]


async def test_redirects_point_at_the_public_url(
    prefixed_bot: PrefixedBot, aiohttp_client: Any, clock: Any
) -> None:
    rig = await _rig(aiohttp_client, clock, prefixed_bot.origin + "/bot", public_prefix="/chat")

    async def redirect(path: str, **headers: str) -> aiohttp.ClientResponse:
        async with rig.client.get(path, headers=headers, allow_redirects=False) as response:
            assert response.status == 302
            return response

    first = await redirect("/engine?redirect=1")
    sid = first.headers["X-Session-Id"]
    assert first.headers["Location"] == "/chat/engine?after=1"  # no ;jsessionid= for a cookie-carrying client
    assert any(c.startswith(f"JSESSIONID={sid}; Path=/chat;") for c in first.headers.getall("Set-Cookie"))
    by_header = await redirect("/engine?redirect=1", **{"X-Teneo-Session": f"JSESSIONID={sid}"})
    assert by_header.headers["Location"] == "/chat/engine?after=1"
    by_path = await redirect(f"/engine;jsessionid={sid}?redirect=1")
    assert by_path.headers["Location"] == f"/chat/engine;jsessionid={sid}?after=1"  # kept: it carries it so
